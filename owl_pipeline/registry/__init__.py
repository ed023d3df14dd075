"""The only package that imports mlflow: run tracking, the pyfunc model, the registry and its promotion gate."""
