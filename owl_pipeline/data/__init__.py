"""Data: the shapes-world corpus, LAION/COYO ingestion into Lance, filters, instruction data, loaders."""
