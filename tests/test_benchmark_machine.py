"""The benchmarks' machine description names the vector extension beside the CPU model."""

import pytest

from benchmarks import common


@pytest.mark.parametrize(
  "flags, expected",
  [
    ("fpu sse2 avx avx2 fma avx512f avx512bw", "AVX-512"),
    ("fpu sse2 avx avx2 fma", "AVX2"),
    ("fpu sse2", None),
  ],
)
def test_vector_isa_is_read_from_the_flags_line(flags, expected):
  lscpu = f"Architecture: x86_64\nModel name: AMD EPYC\nFlags: {flags}\n"
  assert common._vector_isa(lscpu) == expected


def test_no_flags_line_names_no_extension():
  assert common._vector_isa("Architecture: aarch64\nModel name: Neoverse-V2\n") is None
