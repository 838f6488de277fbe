"""`python -m stepjax` runs the same CLI as the `stepjax` script."""

from stepjax import main

if __name__ == "__main__":
  main.cli()
