"""Element dictionary: the token list atoms are embedded with (``dicts/dict.txt``).

The file holds one token per line: special tokens first (``<pad>``: padding, index 0;
``<mask>``: an atom whose element is hidden, for masked conditioning), then the
elements H..Og in order of atomic number. A checkpoint stores ``tokens`` so a model
never depends on the file it was trained with.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from ase.data import atomic_numbers as _Z_OF
from ase.data import chemical_symbols

DEFAULT_PATH = Path(__file__).resolve().parents[2] / "dicts" / "dict.txt"


class Dictionary:
    """Token list with lookup by atomic number or element symbol.

    ``source`` names where the tokens came from (a file path) in error messages.
    """

    def __init__(self, tokens: list[str], source: str = "<tokens>"):
        if len(set(tokens)) != len(tokens):
            raise ValueError(f"duplicate tokens in dictionary {source}")
        self.tokens = list(tokens)
        self.source = source
        self._index = {t: i for i, t in enumerate(self.tokens)}
        # lookup table atomic number (0..118) -> index, -1 where the element is absent
        self._by_z = torch.tensor([self._index.get(s, -1) if z else -1 for z, s in enumerate(chemical_symbols[:119])])

    @classmethod
    def load(cls, path: str | os.PathLike | None = None) -> "Dictionary":
        """Read one token per line from ``path`` (default ``dicts/dict.txt``); blank lines skipped."""
        path = Path(path) if path is not None else DEFAULT_PATH
        if not path.is_file():
            raise FileNotFoundError(f"dictionary file not found: {path}")
        tokens = [line.strip() for line in path.read_text().splitlines() if line.strip()]
        return cls(tokens, source=str(path))

    def __len__(self) -> int:
        return len(self.tokens)

    def index(self, element: int | str) -> int:
        """Index of an element given by atomic number (``29``) or symbol (``"Cu"``).

        Raises ``KeyError`` naming the element and the dictionary file if it is absent.
        """
        if isinstance(element, str):
            symbol = element
        else:
            z = int(element)
            symbol = chemical_symbols[z] if 1 <= z <= 118 else f"Z={z}"
        if symbol not in self._index or symbol not in _Z_OF:
            raise KeyError(f"element {symbol!r} is not in the dictionary {self.source}")
        return self._index[symbol]

    def indices(self, atomic_numbers: torch.Tensor) -> torch.Tensor:
        """Indices ``[N]`` long of atomic numbers ``[N]``; ``KeyError`` as in :meth:`index`."""
        z = atomic_numbers.long().cpu()
        idx = self._by_z[z.clamp(0, 118)]
        bad = (idx < 0) | (z < 1) | (z > 118)
        if bad.any():
            self.index(int(z[bad][0]))
        return idx.to(atomic_numbers.device)
