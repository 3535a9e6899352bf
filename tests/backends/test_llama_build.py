"""The llama.cpp build: this CPU's features, never the AMX kernels (they segfault on Q4_K models).

The flags come from deploy/install-llama-cpp.sh, which `make serve`, `make test` and the Dockerfile use.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.paths import ROOT

pytestmark = pytest.mark.process  # gateway, engine or CLI processes, or a model loaded here

SCRIPT = ROOT / "deploy" / "install-llama-cpp.sh"

# The first `flags` line of /proc/cpuinfo on the three kinds of machine this must run on.
EPYC_AVX2 = ("fpu vme de pse tsc msr pae mce cx8 apic sep mtrr pge mca cmov pat pse36 clflush mmx fxsr sse sse2 ht "
             "syscall nx mmxext fxsr_opt pdpe1gb rdtscp lm constant_tsc rep_good nopl cpuid pni pclmulqdq ssse3 fma "
             "cx16 sse4_1 sse4_2 movbe popcnt aes xsave avx f16c rdrand hypervisor lahf_lm cmp_legacy abm sse4a "
             "misalignsse 3dnowprefetch bmi1 avx2 smep bmi2 rdseed adx smap clflushopt clwb sha_ni xsaveopt xsavec")
SKYLAKE_AVX512 = EPYC_AVX2 + " avx512f avx512dq avx512cd avx512bw avx512vl avx512_vnni"
SAPPHIRE_RAPIDS = (SKYLAKE_AVX512 + " avx512ifma avx512vbmi avx_vnni avx512_bf16 avx512_vbmi2 gfni vaes "
                   "avx512_bitalg avx512_vpopcntdq amx_bf16 avx512_fp16 amx_tile amx_int8")


def cmake_args(cpuinfo: Path | None = None, **env: str) -> set[str]:
    environment = {"PATH": "/usr/bin:/bin", "HOME": str(Path.home()), **env}
    if cpuinfo is not None:
        environment["LLAMA_CPP_CPUINFO"] = str(cpuinfo)
    out = subprocess.run(["bash", str(SCRIPT), "--print-cmake-args"], capture_output=True, text=True,
                         env=environment, check=True, timeout=30).stdout
    return set(out.split())


def cpu(tmp_path: Path, flags: str) -> Path:
    path = tmp_path / "cpuinfo"
    path.write_text(f"processor\t: 0\nmodel name\t: test\nflags\t\t: {flags}\n\n", encoding="utf-8")
    return path


NO_AMX = {"-DGGML_AMX_TILE=OFF", "-DGGML_AMX_INT8=OFF", "-DGGML_AMX_BF16=OFF"}


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="x86 Linux flags")
def test_flags_follow_the_cpu_and_never_enable_amx(tmp_path: Path) -> None:
    epyc = cmake_args(cpu(tmp_path, EPYC_AVX2))
    assert {"-DGGML_NATIVE=OFF", "-DGGML_AVX2=ON", "-DGGML_FMA=ON", "-DGGML_F16C=ON", "-DGGML_AVX512=OFF"} <= epyc
    assert NO_AMX <= epyc
    skx = cmake_args(cpu(tmp_path, SKYLAKE_AVX512))
    assert {"-DGGML_AVX512=ON", "-DGGML_AVX512_VNNI=ON", "-DGGML_AVX512_BF16=OFF"} <= skx and NO_AMX <= skx
    spr = cmake_args(cpu(tmp_path, SAPPHIRE_RAPIDS))
    assert {"-DGGML_AVX512=ON", "-DGGML_AVX512_VBMI=ON", "-DGGML_AVX512_BF16=ON", "-DGGML_AVX_VNNI=ON"} <= spr
    assert NO_AMX <= spr and not any("AMX" in a and a.endswith("=ON") for a in spr)
    assert "-DGGML_NATIVE=ON" not in spr, "-march=native would compile the AMX kernels in again"


def test_the_portable_build_is_an_avx2_baseline_and_own_flags_win(tmp_path: Path) -> None:
    portable = cmake_args(cpu(tmp_path, SAPPHIRE_RAPIDS), LLAMA_CPP_BUILD="portable")
    assert {"-DGGML_NATIVE=OFF", "-DGGML_AVX2=ON"} <= portable and NO_AMX <= portable
    assert not any("AVX512" in a for a in portable)
    assert cmake_args(LLAMA_CPP_CMAKE_ARGS="-DGGML_NATIVE=ON -DX=1") == {"-DGGML_NATIVE=ON", "-DX=1"}


def test_the_installed_build_is_the_scripts_and_has_no_amx() -> None:
    """The suite runs on what `make test` installed: no AMX kernels, weight repacking on, and the
    marker that says which build it is (so a venv with another build gets reinstalled)."""
    import llama_cpp

    own = {k: v for k, v in os.environ.items() if k.startswith("LLAMA_CPP_")}  # flags a user chose
    info = llama_cpp.llama_print_system_info().decode()
    if "LLAMA_CPP_CMAKE_ARGS" not in own:
        assert "AMX_INT8 = 1" not in info, info
    assert "REPACK = 1" in info, info
    marker = Path(sys.prefix) / "llama-cpp-build.txt"
    if not marker.is_file():
        pytest.skip("llama-cpp-python was not installed by deploy/install-llama-cpp.sh")
    recorded = marker.read_text(encoding="utf-8")
    assert f"llama-cpp-python {llama_cpp.__version__} build " in recorded
    assert " ".join(sorted(cmake_args(**own))) == " ".join(sorted(recorded.split(": ", 1)[1].split()))
