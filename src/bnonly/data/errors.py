"""The one exception data loading raises for missing or malformed data."""

from ..errors import BnonlyError


class DataError(BnonlyError, ValueError):
    """Data is missing or malformed; the message says what was expected, where, and how to fix it."""


#: What ``open_dataset`` understands, quoted in every "nothing usable here" message.
EXPECTED = (
    "cifar-10-python.tar.gz or cifar-10-batches-py/ (CIFAR-10), "
    "cifar-100-python.tar.gz or cifar-100-python/ (CIFAR-100), "
    "or an image folder with train/ and test/ (or val/) subfolders holding one folder per class"
)

#: How to fix it; nothing is ever downloaded.
HOW_TO_FIX = (
    "Put cifar-10-python.tar.gz or cifar-10-batches-py/ there, or point --data at an image folder "
    "with train/ and test/ subfolders (or use --data synthetic for a smoke test). "
    "Nothing is downloaded: the official CIFAR archives are at https://www.cs.toronto.edu/~kriz/cifar.html"
)
