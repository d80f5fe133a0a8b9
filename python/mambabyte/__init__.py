"""mambabyte: byte-level Mamba (MambaByte) from Python, over the C library.

    import mambabyte
    model = mambabyte.Model.load("model.bin")        # or Model.create(), or:
    model = mambabyte.train(text, time_budget=30, schedule="time")
    model.generate("The harbour", 100, temperature=0.8, seed=7)
    cm = mambabyte.CharModel(model)                  # the WikiText benchmark's interface
    cm.reset(); cm.predict(); cm.observe("T")

Pure Python over ctypes; needs numpy, and PyTorch only for to_torch /
from_torch.  The C library (libmambabyte.so, `make lib`) is looked for
next to this package, then in the repository root; MAMBABYTE_LIBRARY
names another one.  Errors from C raise MambaByteError (status and
mb_last_error's detail).
"""

from ._lib import lib as _library  # raises ImportError when the library is not built
from ._core import MambaByteError, Model, Stream, Streams
from ._train import train, training_fields
from ._charmodel import CharModel

__version__ = "0.1.0"
__all__ = ["Model", "Stream", "Streams", "CharModel", "MambaByteError", "train", "training_fields", "library_path",
           "has_cuda"]


def library_path():
    """The path of the loaded C library."""
    return _library.path


def has_cuda():
    """True when the loaded library has the CUDA backend and sees a GPU."""
    return _library.has_cuda and _library.mb_cuda_device_count() > 0
