"""Read pickled checkpoints without running their code.

:func:`load` first tries ``torch.load(..., weights_only=True)``: tensors and plain
containers. Older checkpoints of other toolkits also pickle their configuration as
objects: fairseq's ``argparse.Namespace`` (``args``), OmegaConf's ``DictConfig``
(``cfg``), fairseq's dataclasses, enums and meters. Those go through
:class:`PlainDataUnpickler`, whose allow-list holds what ``weights_only`` allows
(tensor rebuilding, a few builtins), numpy scalars and arrays, and *stand-ins* for
any class of ``argparse.Namespace``, ``omegaconf`` or ``fairseq``: a stand-in only
records what the pickle gives it and runs none of that class's code (fairseq need
not even be installed), and :func:`plain` turns it into dicts, lists and values.
A pickle asking for any other global (``os.system``, ``builtins.eval``, a model
class) is refused with a :class:`~speechssl.errors.CheckpointError` naming it, before
anything is called.
"""

from __future__ import annotations

import _compat_pickle
import builtins
import collections
import os
import pickle
import zipfile
from typing import Any

import torch

from speechssl.errors import CheckpointError, first_line

# modules whose classes are rebuilt as plain data (see the module doc)
PLAIN_DATA_MODULES = ("omegaconf", "fairseq")
PLAIN_DATA_GLOBALS = {"argparse.Namespace", "typing.Any"}
SAFE_GLOBALS = {"collections.defaultdict": collections.defaultdict}  # its factory comes through find_class too
SAFE_BUILTINS = {"int", "float", "complex", "str", "bytes", "bytearray", "bool", "dict", "list", "tuple", "set",
                 "frozenset", "slice", "range", "object"}  # fmt: skip
NUMPY_GLOBALS = {"numpy.core.multiarray.scalar", "numpy._core.multiarray.scalar", "numpy.dtype", "numpy.ndarray",
                 "numpy.core.multiarray._reconstruct", "numpy._core.multiarray._reconstruct"}  # fmt: skip


_torch_load = torch.load  # torch's own, even while a caller routes torch.load here (speechssl.s3prl_bridge)


class PlainData:
    """Stands in for a class of the allow-list: records constructor arguments and state, runs nothing."""

    path = ""  # "module.Name" of the class it stands in for

    def __new__(cls, *args, **kwargs):
        obj = object.__new__(cls)
        obj.args, obj.state = args, None
        return obj

    def __init__(self, *args, **kwargs) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def __repr__(self) -> str:
        return f"<{self.path} {plain(self)!r}>"


_STAND_INS: dict[str, type] = {}


def _stand_in(path: str) -> type:
    if path not in _STAND_INS:
        _STAND_INS[path] = type(path.rsplit(".", 1)[-1], (PlainData,), {"path": path})
    return _STAND_INS[path]


def _reconstructor(cls, base, state):
    """``copyreg._reconstructor`` for protocol 0/1 pickles, for stand-ins only."""
    if isinstance(cls, type) and issubclass(cls, PlainData):
        obj = cls.__new__(cls)
        if state is not None:
            obj.args = (state,)
        return obj
    raise CheckpointError(f"the pickle rebuilds {cls!r} through copyreg._reconstructor, which is not allowed")


def _torch_globals() -> dict[str, Any]:
    """What ``torch.load(weights_only=True)`` itself allows (tensor rebuilding, dtypes, OrderedDict)."""
    try:
        from torch._weights_only_unpickler import _get_allowed_globals

        return dict(_get_allowed_globals())
    except ImportError:  # a torch without the private table: the few globals a state dict needs
        import torch._utils as u

        return {
            "collections.OrderedDict": collections.OrderedDict,
            "torch._utils._rebuild_tensor_v2": u._rebuild_tensor_v2,
            "torch._utils._rebuild_parameter": u._rebuild_parameter,
            "torch.Size": torch.Size,
        }


class PlainDataUnpickler(pickle.Unpickler):
    """An unpickler that looks up only allow-listed globals (see the module doc)."""

    allowed = None  # filled on first use

    def find_class(self, module: str, name: str) -> Any:
        # protocol 2 writes Python 2 names (__builtin__.long): map them as pickle's own find_class does
        if (module, name) in _compat_pickle.NAME_MAPPING:
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        path = f"{module}.{name}"
        if PlainDataUnpickler.allowed is None:
            PlainDataUnpickler.allowed = _torch_globals()
        if path in PlainDataUnpickler.allowed:
            return PlainDataUnpickler.allowed[path]
        if path in SAFE_GLOBALS:
            return SAFE_GLOBALS[path]
        if path in PLAIN_DATA_GLOBALS or module.split(".")[0] in PLAIN_DATA_MODULES:
            return _stand_in(path)
        if module == "builtins" and name in SAFE_BUILTINS:
            return getattr(builtins, name)
        if module == "copyreg" and name == "_reconstructor":
            return _reconstructor
        if path in NUMPY_GLOBALS:
            return super().find_class(module, name)
        raise CheckpointError(
            f"the checkpoint asks to import '{path}', which is not allowed: only tensors, plain data and the "
            "configuration objects of fairseq, OmegaConf and argparse are read from a pickle (nothing in it was run)"
        )


class _PickleModule:
    """What ``torch.load(pickle_module=...)`` uses: our unpickler for the data, pickle for the rest."""

    __name__ = "speechssl.safe_pickle"
    Unpickler = PlainDataUnpickler
    UnpicklingError = pickle.UnpicklingError

    @staticmethod
    def load(file, **kwargs):
        return PlainDataUnpickler(file, **kwargs).load()


def load(path: str | os.PathLike) -> Any:
    """The content of a ``torch.save`` file (zip or legacy format) as tensors and plain data.

    ``weights_only=True`` first; a pickle that holds configuration objects is read again with
    :class:`PlainDataUnpickler` and returned through :func:`plain`. Raises
    :class:`CheckpointError` for a global outside the allow-list, a TorchScript archive, and a
    truncated or corrupt file.
    """
    try:
        return _torch_load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        refused = e
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile) as e:
        raise CheckpointError(f"{path}: not a readable checkpoint, truncated or corrupt ({first_line(e)})") from e
    if _is_torchscript(path):
        raise CheckpointError(f"{path}: a TorchScript archive, not a checkpoint of weights; it is not loaded")
    try:
        content = _torch_load(path, map_location="cpu", weights_only=False, pickle_module=_PickleModule)
    except CheckpointError as e:
        raise CheckpointError(f"{path}: {e}") from refused
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, AttributeError, TypeError) as e:
        raise CheckpointError(f"{path}: not a readable checkpoint, truncated or corrupt ({first_line(e)})") from e
    return plain(content)


def _is_torchscript(path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(name.endswith("constants.pkl") or "/code/" in name for name in archive.namelist())


def plain(obj: Any) -> Any:
    """``obj`` with every stand-in turned into plain data: a Namespace or dataclass into the dict of
    its fields, a ``DictConfig`` / ``ListConfig`` into a dict / list of its values, an OmegaConf
    value node into its value, an enum into its value."""
    if isinstance(obj, PlainData):
        state = obj.state
        name = obj.path.rsplit(".", 1)[-1]
        if isinstance(state, dict) and "_content" in state:  # an OmegaConf node
            content = state["_content"] if name != "ValueNode" else state.get("_val")
            return plain(content)
        if isinstance(state, dict) and "_val" in state:  # an OmegaConf value node
            return plain(state["_val"])
        if isinstance(state, tuple) and len(state) == 2 and isinstance(state[1], dict):  # (dict, slots)
            state = {**(state[0] or {}), **state[1]}
        if isinstance(state, dict):
            return {k: plain(v) for k, v in state.items()}
        if state is not None:
            return plain(state)
        if len(obj.args) == 1:  # an enum, or a class rebuilt from one value
            return plain(obj.args[0])
        return [plain(a) for a in obj.args] if obj.args else None
    if isinstance(obj, collections.OrderedDict):
        return collections.OrderedDict((k, plain(v)) for k, v in obj.items())
    if isinstance(obj, dict):
        return {k: plain(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [plain(v) for v in obj]
    if isinstance(obj, tuple):
        return tuple(plain(v) for v in obj)
    return obj
