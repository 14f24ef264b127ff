"""The examples run as a user runs them (short versions): a DCGAN trained on
scikit-learn's digits writes its two PNGs and its step time; the vocoder upsampler
computes torch's waveform and prints its timing."""
import re
import subprocess
import sys
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def _run(script, *args, cwd):
    done = subprocess.run([sys.executable, str(EXAMPLES / script), *args], cwd=cwd,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_dcgan_digits_trains_and_writes_its_figures(tmp_path):
    out = _run("dcgan_digits.py", "--steps", "12", "--timing-rounds", "2", "--out",
               str(tmp_path / "out"), cwd=tmp_path)
    assert "1797 digits" in out
    assert re.search(r"generator step .*fastconvt [\d.]+ ms, torch [\d.]+ ms, speed-up "
                     r"[\d.]+x", out), out
    for name in ("samples.png", "losses.png"):
        data = (tmp_path / "out" / name).read_bytes()
        assert data.startswith(b"\x89PNG") and len(data) > 5000


def test_vocoder_upsampler_matches_torch(tmp_path):
    out = _run("vocoder_upsampler.py", "--frames", "8", "--rounds", "2", cwd=tmp_path)
    assert "converted 4 weight-normalised ConvTranspose1d layers" in out
    difference = float(re.search(r"max difference from torch's ([\d.e+-]+)", out).group(1))
    assert difference < 1e-5
    assert re.search(r"speed-up [\d.]+x", out)
