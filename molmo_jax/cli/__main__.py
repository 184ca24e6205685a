"""`python -m molmo_jax.cli ...`: the `molmo-jax` command."""
import sys

from molmo_jax.cli import main

sys.exit(main())
