"""GGUF files in and out, in one place.

- `header`: the one strict header parser (standard library only): every length checked against
  the bytes that remain, so a damaged file raises GGUFFormatError instead of reading past its end.
- `check`: the runtime's validation of a file before llama.cpp opens it (AHN metadata against the
  tensors included).
- `contents`: whole files for the converter: a fast reader into `GGUFContents`, one writer (gguf-py's
  GGUFWriter), all-or-nothing outputs.
- `to_hf`: a (quantized) GGUF dequantized into a Hugging Face folder for the PyTorch reference.
"""
