"""Dataset facts (info.py) and the tfds builders the catalog lacks (cinic10.py, digits.py).

info.py is pure Python so that config checks and model summaries need no TensorFlow. The builders import
tensorflow_datasets, so this package does not import them on its own: call register_builders() (the input
pipeline does) before asking tfds for 'cinic10' or 'sklearn_digits'.
"""


def register_builders() -> None:
    """Makes tfds know 'cinic10' and 'sklearn_digits' (defining a builder class registers it)."""
    from mbde_jax.data import cinic10, digits  # noqa: F401  pylint: disable=import-outside-toplevel
