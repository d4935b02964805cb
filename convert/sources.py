"""Where checkpoints come from: a local folder, or a Hugging Face repo id downloaded on demand."""

from __future__ import annotations

import logging
import re
from pathlib import Path

from ahn_gguf.errors import ConversionError

log = logging.getLogger("ahn_gguf.convert")

_REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")
# what a conversion needs from a repo: configs, weights, tokenizer, model card, chat template
ALLOW_PATTERNS = ["*.json", "*.safetensors", "*.txt", "*.model", "*.jinja", "*.tiktoken", "README.md", "LICENSE*"]


def resolve_checkpoint(arg: str, what: str) -> Path:
    """A folder for `arg`: the folder itself, or a snapshot of the Hugging Face repo it names."""
    path = Path(arg).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        hint = " (a GGUF file? attach AHN weights to it with: ahn-gguf attach BASE.gguf AHN -o OUT.gguf)" \
            if path.suffix == ".gguf" else ""
        raise ConversionError(f"{what} {arg} is a file, not a checkpoint folder{hint}")
    if not _REPO_ID.match(arg):
        raise ConversionError(f"{what} {arg}: no such folder (and not a Hugging Face repo id like owner/name)")
    return download(arg, what)


def download(repo_id: str, what: str) -> Path:
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise ConversionError(
            f"{what} {repo_id} is not a local folder and huggingface_hub is not installed to download it; "
            f"download the repo yourself and pass its folder") from None
    log.info("%s: downloading %s from the Hugging Face hub (cached)", what, repo_id)
    try:
        return Path(snapshot_download(repo_id=repo_id, allow_patterns=ALLOW_PATTERNS))
    except Exception as e:  # offline, unreachable, unknown or gated repo: all say the same to the user
        raise ConversionError(
            f"could not get {what} {repo_id!r} from the Hugging Face hub ({type(e).__name__}: "
            f"{str(e).splitlines()[0] if str(e) else 'no details'}). Without network access, download the "
            f"folders elsewhere (e.g. `hf download {repo_id} --local-dir DIR`) and pass their paths "
            f"instead of repo ids") from None
