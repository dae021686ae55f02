"""SI units inside gpusim; conversions happen only at the edges (YAML, CLI, reports)."""

KB = 1e3
MB = 1e6
GB = 1e9
TB = 1e12
KiB = 1024.0
MiB = 1024.0**2
GiB = 1024.0**3

US = 1e-6
MS = 1e-3

TFLOPS = 1e12
GHZ = 1e9

DTYPE_BYTES: dict[str, float] = {
    "fp32": 4.0,
    "bf16": 2.0,
    "fp16": 2.0,
    "fp8": 1.0,
    "int8": 1.0,
    "int4": 0.5,
    "fp4": 0.5,   # e2m1 (MXFP4's elements; its scales are counted apart)
}

# Hugging Face `torch_dtype` spellings -> our dtype names.
HF_DTYPES: dict[str, str] = {
    "float32": "fp32",
    "bfloat16": "bf16",
    "float16": "fp16",
    "float8_e4m3fn": "fp8",
    "int8": "int8",
}


def s_to_ms(seconds: float) -> float:
    """Seconds -> milliseconds."""
    return seconds * 1e3


def s_to_us(seconds: float) -> float:
    """Seconds -> microseconds."""
    return seconds * 1e6
