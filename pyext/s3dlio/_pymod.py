"""``s3dlio._pymod``: the name of the original's compiled module, which its Python code and
tests import (``from s3dlio import _pymod``; ``import s3dlio._pymod as core``). Here the whole
API lives in the package itself, so this name is the package."""
import sys

sys.modules[__name__] = sys.modules[__name__.rpartition(".")[0]]
