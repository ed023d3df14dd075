"""OwlEval: answer the questions with a model, score the answers, report."""
