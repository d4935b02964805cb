"""Real long text, offline: Debian packages' documentation and sources, and how they are split.

Sources (`SOURCES`, each a Debian bookworm package pinned by version and sha256, fetched with
`apt-get download` (no root, no install) into the cache and unpacked with `dpkg-deb -x`, or, without
dpkg, by reading the ar archive directly):

- python3.11-doc (default; training): the reStructuredText sources of the Python 3.11
  documentation (497 documents, 11 MB, 2.86M SmolLM2 tokens; 111 longer than 8192 tokens: the
  library and language references, the HOWTOs, the "What's New" series). English prose with code.
- python3.11-stdlib (training): the .py sources that libpython3.11-stdlib installs (270 modules
  of the standard library). Code.
- perl-doc, git-doc (evaluation only): the Perl 5.36 manual pages (.pod) and the Git 2.39
  documentation (.txt, AsciiDoc). Other projects' manuals, never trained on: `load_mixture(...,
  training=True)` refuses them, so an evaluation on them measures text of a domain the AHN has not seen.

Why this text: real, long, coherent, reachable offline through the Debian archive by name,
licensed for this use (each source's license is recorded in its provenance), long enough per
document for 8k-token contexts.

Split (document level, deterministic, independent of the tokenizer and of the download's
version): a document of a training source is *held out* when it is long (>= HELDOUT_MIN_CHARS
characters, about 8k tokens) and the stable hash of its relative path falls in the first
HELDOUT_FRACTION of the hash range. Held-out documents are used only by evaluation, never in a
training batch. Every long document of an evaluation-only source is an evaluation document
(`evaluation_documents`). A mixture of sources is split source by source, so adding a source
never moves a document of another one across the split.

Packing: each document is tokenized on its own (no BOS: SmolLM2's tokenizer adds none) and cut
into non-overlapping sequences of L tokens; a tail shorter than L is dropped, and documents
shorter than L give no sequence. Tokens of two documents are never mixed in one sequence.
`TrainSequences` yields batches in a seeded, epoch-wise shuffled order; its position (epoch,
index) is part of a distillation checkpoint, so a resumed run sees the same batches.

Any folder of text files can stand in (`load_text_folder`, `--data DIR`): the same split and
packing apply (tests use this with tiny synthetic documents).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tarfile
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ahn_gguf.errors import AHNError

from .build.pins import cache_dir, sha256_file

HELDOUT_MIN_CHARS = 32_000        # ~8k SmolLM2 tokens: long enough for the longest eval context
HELDOUT_FRACTION = 0.12           # of the long documents (stable hash of the path)
TEXT_SUFFIXES = (".txt", ".md", ".rst")


@dataclass(frozen=True)
class DebianText:
    """Text that a Debian package installs: the package pinned by version and sha256, the folder of
    the text inside it, which files count as documents, their license, and the role of the source."""

    name: str            # the source's name on the command line
    package: str
    version: str         # pinned; apt may offer a newer one later (accepted with a warning)
    sha256: str          # of the pinned .deb
    member: str          # the folder inside the package whose files are the documents
    suffixes: tuple[str, ...]
    license: str
    kind: str            # "prose" or "code"
    eval_only: bool      # never trained on: a domain the AHN has not seen, for evaluation only


# Every source is Debian bookworm main. The training text is the Python documentation (English prose
# with code) and the Python standard library's sources (code); the two evaluation-only sources are
# prose of other projects' manuals, never trained on.
SOURCES = {s.name: s for s in (
    DebianText("python3.11-doc", "python3.11-doc", "3.11.2-6+deb12u9",
               "5b3594189d6ef9a6963ce0347fd307a1cc67620ad697e144db366070e2e146be",
               "usr/share/doc/python3.11/html/_sources", (".rst.txt",),
               "PSF License Version 2 (Python documentation, Debian package python3.11-doc)", "prose", False),
    DebianText("python3.11-stdlib", "libpython3.11-stdlib", "3.11.2-6+deb12u8",
               "890b3540dad8a1ccc0deeca025db735bcc82629a76adacbe3b50fcc06ed528ca",
               "usr/lib/python3.11", (".py",),
               "PSF License Version 2 (CPython standard library, Debian package libpython3.11-stdlib)", "code", False),
    DebianText("perl-doc", "perl-doc", "5.36.0-7+deb12u3",
               "e9e3564ff5ade27de0585835f2acad769bcc545c0a0045a9f55d5401f27f7591",
               "usr/share/perl/5.36.0/pod", (".pod",),
               "GPL-1+ or Artistic License (Perl 5.36 documentation, Debian package perl-doc)", "prose", True),
    DebianText("git-doc", "git-doc", "1:2.39.5-0+deb12u3",
               "3c89668a11053a6bafade3de1f611f4613db31e082af63f43d8c5b69ad8795ec",
               "usr/share/doc/git-doc", (".txt",),
               "GPL-2.0 (Git 2.39 documentation, Debian package git-doc)", "prose", True),
)}
DATA_SOURCE = "python3.11-doc"  # the default data source
# the default training mixture (`ahn-gguf distill --data`): both training sources
TRAIN_MIXTURE = "python3.11-doc,python3.11-stdlib"


class DataError(AHNError, RuntimeError):
    """The text could not be obtained or is unusable; the message says why and what to do."""


@dataclass(frozen=True)
class Document:
    path: str    # relative to the corpus root, "/"-separated: the identity used by the split
    text: str


@dataclass(frozen=True)
class Split:
    train: tuple[Document, ...]
    heldout: tuple[Document, ...]

    def describe(self) -> str:
        chars = lambda docs: sum(len(d.text) for d in docs)  # noqa: E731
        return (f"{len(self.train)} training documents ({chars(self.train) / 1e6:.1f}M chars), "
                f"{len(self.heldout)} held-out ({chars(self.heldout) / 1e6:.2f}M chars)")


# --- fetching the Debian packages ---------------------------------------------------------------

def _deb_cache() -> Path:
    path = cache_dir() / "debian"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _deb_file_version(version: str) -> str:
    return version.replace(":", "%3a")  # how apt names the file of an epoch version


def fetch_deb(source: DebianText, deb: str | Path | None = None) -> Path:
    """The source's .deb: `deb` if given, else a cached one, else `apt-get download` (no root, no install)."""
    if deb is not None:
        deb = Path(deb)
        if not deb.is_file():
            raise DataError(f"{deb}: no such .deb file")
        return deb
    pkg = source.package
    cached = sorted(_deb_cache().glob(f"{pkg}_*.deb"))
    pinned = [p for p in cached if p.name.startswith(f"{pkg}_{_deb_file_version(source.version)}_")]
    if pinned or cached:
        return (pinned or cached)[-1]
    if shutil.which("apt-get") is None:
        raise DataError(f"apt-get is not available to download {pkg}; download the .deb elsewhere "
                        f"(`apt-get download {pkg}`) and put it in {_deb_cache()}")
    with tempfile.TemporaryDirectory(dir=_deb_cache(), prefix=".apt-") as tmp:
        errors = []
        for spec in (f"{pkg}={source.version}", pkg):
            proc = subprocess.run(["apt-get", "download", spec], cwd=tmp, capture_output=True, text=True)
            got = sorted(Path(tmp).glob(f"{pkg}_*.deb"))
            if proc.returncode == 0 and got:
                break
            errors.append(f"apt-get download {spec}: {proc.stderr.strip()[-500:]}")
        else:
            raise DataError(f"could not download {pkg}:\n" + "\n".join(errors)
                            + f"\n(run `apt-get update`, or put a {pkg} .deb in {_deb_cache()})")
        deb = got[0]
        if sha256_file(deb) != source.sha256:
            warnings.warn(f"{deb.name} is not the pinned {pkg} {source.version} (sha256 {source.sha256[:12]}...); "
                          f"the split is by path and still holds, but the text may differ slightly", stacklevel=2)
        dest = _deb_cache() / deb.name
        os.replace(deb, dest)
    return dest


def _extract_deb(deb: Path, into: Path) -> None:
    """Unpack a .deb's data archive into `into`: dpkg-deb -x, else the ar archive read directly."""
    if shutil.which("dpkg-deb"):
        subprocess.run(["dpkg-deb", "-x", str(deb), str(into)], check=True, capture_output=True)
        return
    with open(deb, "rb") as f:
        if f.read(8) != b"!<arch>\n":
            raise DataError(f"{deb} is not a Debian package (no ar header)")
        while header := f.read(60):
            name, size = header[:16].decode().strip().rstrip("/"), int(header[48:58].decode().strip())
            if name.startswith("data.tar"):
                with tempfile.NamedTemporaryFile(suffix=name) as tmp:
                    tmp.write(f.read(size))
                    tmp.flush()
                    with tarfile.open(tmp.name) as tf:
                        tf.extractall(into, filter="data")
                return
            f.seek(size + (size & 1), 1)
    raise DataError(f"{deb} has no data.tar member")


def source_root(source: DebianText, deb: str | Path | None = None) -> Path:
    """The folder of the source's documents (extracted once into the cache, keyed by the .deb's sha256)."""
    deb = fetch_deb(source, deb)
    digest = sha256_file(deb)
    target = _deb_cache() / f"{source.package}-{digest[:16]}"
    if (target / ".complete").is_file() and (target / "text").is_dir():  # (earlier layouts: extract again)
        return target / "text"
    with tempfile.TemporaryDirectory(dir=_deb_cache(), prefix=".x-") as tmp:
        _extract_deb(deb, Path(tmp))
        src = Path(tmp) / source.member
        if not src.is_dir():
            raise DataError(f"{deb.name} has no {source.member}: not the {source.package} package?")
        out = Path(tmp) / "out"
        out.mkdir()
        os.replace(src, out / "text")
        (out / "deb.json").write_text(json.dumps({"deb": deb.name, "sha256": digest, "license": source.license}))
        (out / ".complete").write_text("")
        shutil.rmtree(target, ignore_errors=True)
        os.replace(out, target)
    return target / "text"


def source_provenance(source: DebianText, deb: str | Path | None = None) -> dict:
    root = source_root(source, deb)
    info = json.loads((root.parent / "deb.json").read_text())
    info.update(source=source.name, kind=source.kind, eval_only=source.eval_only, pinned_version=source.version,
                pinned_sha256=source.sha256, member=f"{source.member}/**/*{'|'.join(source.suffixes)}")
    return info


# --- documents --------------------------------------------------------------------------------

def load_text_folder(root: str | Path, suffixes=TEXT_SUFFIXES) -> list[Document]:
    """Every text file below `root` whose name ends with one of `suffixes`, sorted by path."""
    root = Path(root)
    docs = []
    for path in sorted(root.rglob("*")):
        if path.is_file() and path.name.endswith(tuple(suffixes)):
            text = path.read_text(encoding="utf-8", errors="replace")
            if text.strip():
                docs.append(Document(path.relative_to(root).as_posix(), text))
    if not docs:
        raise DataError(f"no text files ({', '.join(suffixes)}) below {root}")
    return docs


def source_documents(source: DebianText, deb: str | Path | None = None) -> list[Document]:
    """The documents of a Debian source, sorted by path (relative to its folder in the package)."""
    return load_text_folder(source_root(source, deb), source.suffixes)


def python_docs(deb: str | Path | None = None) -> list[Document]:
    """The 497 reST sources of the Python 3.11 documentation (python3.11-doc), sorted by path."""
    return source_documents(SOURCES[DATA_SOURCE], deb)


def load_source(source: str | None = None) -> tuple[list[Document], dict]:
    """(documents, provenance) of one data source: a name of SOURCES (default python3.11-doc),
    a python3.11-doc .deb, or a folder of text files."""
    if source in (None, ""):
        source = DATA_SOURCE
    if source in SOURCES:
        return source_documents(SOURCES[source]), source_provenance(SOURCES[source])
    path = Path(source)
    if path.is_file() and path.suffix == ".deb":
        return python_docs(path), source_provenance(SOURCES[DATA_SOURCE], path)
    if path.is_dir():
        return load_text_folder(path), {"folder": str(path.resolve()), "eval_only": False}
    raise DataError(f"unknown data source {source!r}: expected one of {', '.join(SOURCES)}, "
                    f"a {DATA_SOURCE} .deb or a folder of text files")


def source_names(spec: str | None) -> list[str]:
    """The sources of a comma-separated mixture ("python3.11-doc,python3.11-stdlib"); a folder is one source."""
    if spec in (None, ""):
        return [DATA_SOURCE]
    names = [x.strip() for x in spec.split(",") if x.strip()] if not Path(spec).exists() else [spec]
    if len(set(names)) != len(names):
        raise DataError(f"a source is named twice in {spec!r}")
    return names


def load_mixture(spec: str | None, *, training: bool) -> list[tuple[str, list[Document], dict]]:
    """[(name, documents, provenance)] of every source of a mixture. `training`: evaluation-only sources
    (never trained on, SOURCES[..].eval_only) are refused."""
    out = []
    for name in source_names(spec):
        docs, prov = load_source(name)
        if training and prov.get("eval_only"):
            raise DataError(f"{name} is an evaluation-only source (a domain the AHN must not see in training); "
                            f"train on {', '.join(n for n, s in SOURCES.items() if not s.eval_only)} or a folder")
        out.append((name, docs, prov))
    return out


def stable_hash(path: str) -> float:
    """A number in [0, 1) fixed by the document's relative path alone."""
    return int.from_bytes(hashlib.sha256(path.encode("utf-8")).digest()[:8], "big") / 2.0 ** 64


def is_heldout(doc: Document, min_chars: int = HELDOUT_MIN_CHARS, fraction: float = HELDOUT_FRACTION) -> bool:
    return len(doc.text) >= min_chars and stable_hash(doc.path) < fraction


def evaluation_documents(docs, eval_only: bool) -> tuple[Document, ...]:
    """The documents an evaluation may score: the held-out ones of a training source, every long one
    (>= HELDOUT_MIN_CHARS) of an evaluation-only source."""
    if eval_only:
        return tuple(d for d in docs if len(d.text) >= HELDOUT_MIN_CHARS)
    return split_documents(docs).heldout


def split_documents(docs, min_chars: int = HELDOUT_MIN_CHARS, fraction: float = HELDOUT_FRACTION) -> Split:
    """Held-out = long documents whose path hash is in the first `fraction`; the rest train."""
    heldout = tuple(d for d in docs if is_heldout(d, min_chars, fraction))
    train = tuple(d for d in docs if not is_heldout(d, min_chars, fraction))
    return Split(train, heldout)


# --- tokenization and packing ---------------------------------------------------------------------

def load_tokenizer(model_dir: str | Path):
    """The `tokenizers.Tokenizer` of a Hugging Face folder (its tokenizer.json)."""
    from tokenizers import Tokenizer

    path = Path(model_dir) / "tokenizer.json"
    if not path.is_file():
        raise DataError(f"no tokenizer.json in {model_dir}")
    return Tokenizer.from_file(str(path))


def tokenize(docs, tokenizer) -> list[np.ndarray]:
    """Token ids (int32) of each document, no special tokens added. Deterministic."""
    encodings = tokenizer.encode_batch([d.text for d in docs], add_special_tokens=False)
    return [np.asarray(e.ids, dtype=np.int32) for e in encodings]


def pack(token_docs, length: int) -> np.ndarray:
    """[N, length] int32: non-overlapping `length`-token pieces of each document, tails dropped."""
    rows = [t[i * length:(i + 1) * length] for t in token_docs for i in range(len(t) // length)]
    if not rows:
        return np.zeros((0, length), dtype=np.int32)
    return np.stack(rows).astype(np.int32)


class TrainSequences:
    """Packed training sequences served in batches, in a seeded order reshuffled every epoch.

    The position (epoch, index) is the whole state: `state_dict()` / `load_state_dict()` restore
    it, so a resumed run continues with exactly the batches an uninterrupted one would see.
    """

    def __init__(self, sequences: np.ndarray, seed: int = 0):
        if len(sequences) == 0:
            raise DataError("no training sequence: every training document is shorter than the sequence length")
        self.sequences = sequences
        self.seed = seed
        self.epoch = 0
        self.index = 0

    def __len__(self) -> int:
        return len(self.sequences)

    def _order(self, epoch: int) -> np.ndarray:
        if getattr(self, "_order_epoch", None) != epoch:
            self._order_epoch = epoch
            self._order_cache = np.random.default_rng([self.seed, epoch]).permutation(len(self.sequences))
        return self._order_cache

    def next_batch(self, batch_size: int) -> np.ndarray:
        rows = []
        while len(rows) < batch_size:
            if self.index >= len(self.sequences):
                self.epoch, self.index = self.epoch + 1, 0
            rows.append(self._order(self.epoch)[self.index])
            self.index += 1
        return self.sequences[np.asarray(rows)]

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "index": self.index, "seed": self.seed, "n": len(self.sequences)}

    def load_state_dict(self, state: dict) -> None:
        if state["n"] != len(self.sequences) or state["seed"] != self.seed:
            raise DataError(f"the checkpoint's data ({state['n']} sequences, seed {state['seed']}) is not this run's "
                            f"({len(self.sequences)} sequences, seed {self.seed}): same data source, length and seed?")
        self.epoch, self.index = state["epoch"], state["index"]


def training_sequences(split: Split, tokenizer, length: int) -> np.ndarray:
    return pack(tokenize(split.train, tokenizer), length)
