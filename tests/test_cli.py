"""``python -m fastconvt size``: the documented examples run as a user runs
them (subprocesses, started together since each pays fastconvt's import time,
outside the repository so the installed copy is used); the other cases through
``main(argv)`` in-process. Expected sizes come from torch's layer."""
import re
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from fastconvt.__main__ import main

RUNS = {
    "article": "size --input 4 --kernel 3 --stride 2 --padding 1 --output-padding 1",
    "target": "size --input 4 --kernel 3 --stride 2 --padding 1 --target 8",
    "unreachable": "size --input 4 --kernel 3 --stride 2 --padding 1 --target 9",
    "help": "size --help",
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    cwd = tmp_path_factory.mktemp("cli")
    procs = {name: subprocess.Popen([sys.executable, "-m", "fastconvt", *args.split()],
                                    cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                    text=True)
             for name, args in RUNS.items()}
    results = {}
    for name, proc in procs.items():
        out, err = proc.communicate(timeout=300)
        results[name] = (proc.returncode, out, err)
    return results


def _run(capsys, args):
    """``main`` on ``args``: (exit status, stdout, stderr)."""
    try:
        code = main(args.split())
    except SystemExit as e:
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


def _torch_hw(input, kernel, stride, padding, output_padding, dilation):
    y = F.conv_transpose2d(torch.zeros((1, 1) + input), torch.zeros((1, 1) + kernel), None,
                           stride, padding, output_padding, 1, dilation)
    return tuple(y.shape[2:])


def test_article_example_prints_8_with_the_arithmetic(runs):
    code, out, err = runs["article"]
    assert code == 0, err
    assert out.splitlines() == ["(4 - 1) * 2 - 2 * 1 + 1 * (3 - 1) + 1 + 1 = 8"]
    assert _torch_hw((4, 4), (3, 3), 2, 1, 1, 1) == (8, 8)


def test_target_prints_the_output_padding(runs):
    code, out, err = runs["target"]
    assert code == 0, err
    assert out.splitlines() == ["output_padding = 1",
                                "(4 - 1) * 2 - 2 * 1 + 1 * (3 - 1) + 1 + 1 = 8"]


def test_unreachable_target_exits_2_with_the_message(runs):
    code, out, err = runs["unreachable"]
    assert code == 2 and out == ""
    assert err.startswith("usage: ")
    assert "error: no output_padding reaches size 9" in err
    assert err.rstrip().endswith("reachable sizes: 7, 8")


def test_help(runs, capsys):
    code, out, err = runs["help"]
    assert code == 0 and err == ""
    for word in ("--input", "--kernel", "--stride", "--padding", "--dilation",
                 "--output-padding", "--target", "output_padding + 1", "4,6"):
        assert word in out
    code, out, _ = _run(capsys, "--help")
    assert code == 0 and "size" in out


def test_pairs_and_dilation(capsys):
    code, out, err = _run(capsys, "size --input 5,3 --kernel 4,2 --stride 3,1 --padding 2,0 "
                                  "--dilation 2,3 --output-padding 1,2")
    assert code == 0, err
    h, w = _torch_hw((5, 3), (4, 2), (3, 1), (2, 0), (1, 2), (2, 3))
    assert out.splitlines() == [f"H: (5 - 1) * 3 - 2 * 2 + 2 * (4 - 1) + 1 + 1 = {h}",
                                f"W: (3 - 1) * 1 - 2 * 0 + 3 * (2 - 1) + 2 + 1 = {w}"]


def test_defaults(capsys):
    code, out, err = _run(capsys, "size --input 4 --kernel 3")
    assert code == 0, err
    assert out.splitlines() == [f"(4 - 1) * 1 - 2 * 0 + 1 * (3 - 1) + 0 + 1 = "
                                f"{_torch_hw((4, 4), (3, 3), 1, 0, 0, 1)[0]}"]


def test_target_pairs_beyond_the_stride(capsys):
    code, out, err = _run(capsys, "size --input 4,6 --kernel 3 --stride 2,1 --padding 1 "
                                  "--dilation 1,4 --target 7,14")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].startswith("output_padding = ")
    op = tuple(int(v) for v in lines[0].split(" = ")[1].split(","))
    assert _torch_hw((4, 6), (3, 3), (2, 1), 1, op, (1, 4)) == (7, 14)
    assert op[1] >= 1  # at least the stride: beyond torch's module output_size=
    assert lines[1].startswith("H: ") and lines[1].endswith(" = 7")
    assert lines[2].startswith("W: ") and lines[2].endswith(" = 14")


@pytest.mark.parametrize("args, words", [
    ("size --input 4 --kernel 3 --stride 2 --output-padding 2",
     ["output_padding must be smaller than either stride or dilation"]),
    ("size --input 4 --kernel 3 --padding 4", ["not positive", "= -2"]),
    ("size --input 4 --kernel 3 --stride 0", ["stride must be positive"]),
    ("size --input 4,6 --kernel 3 --stride 2 --target 9,15", ["size 15 along W"]),
    ("size --input 4 --kernel 3 --output-padding 0 --target 6", ["not allowed with argument"]),
    ("size --input 4x --kernel 3", ["--input", "'4x'"]),
    ("size --input 4,5,6 --kernel 3", ["--input", "'4,5,6'"]),
    ("size --kernel 3", ["--input"]),
    ("", ["command"]),
], ids=str)
def test_bad_arguments_exit_2(capsys, args, words):
    code, out, err = _run(capsys, args)
    assert code == 2 and out == ""
    assert "usage: " in err
    for word in words:
        assert word in err


def test_info_names_versions_cpu_threads_and_caches(capsys, tmp_path, monkeypatch):
    import torch

    monkeypatch.setenv("FASTCONVT_CACHE_DIR", str(tmp_path))
    code, out, err = _run(capsys, "info")
    assert code == 0 and err == ""
    fields = dict(re.split(r"\s{2,}", line, maxsplit=1) for line in out.splitlines())
    assert fields["torch"] == torch.__version__
    assert fields["threads"].startswith(f"torch {torch.get_num_threads()}")
    assert fields["plan file"].startswith(str(tmp_path)) and fields["plan file"].endswith(
        "(0 plans)")
    assert fields["numba cache"].endswith("kernels cached)") or fields["numba cache"].startswith(
        "off")


def test_warmup_reports_each_dtype(capsys):
    code, out, err = _run(capsys, "warmup --dtype float64")
    assert code == 0
    assert out.startswith("float64: compiling or loading the kernels ... done in ")


def test_size_needs_neither_torch_nor_numba():
    """The size arithmetic imports only fastconvt.sizes: a fresh process answers in a
    blink (the package's names load on first use)."""
    script = ("import sys; from fastconvt.__main__ import main; "
              "main(['size', '--input', '4', '--kernel', '3', '--stride', '2']); "
              "print(sorted({'torch', 'numba', 'numpy'} & set(sys.modules)))")
    done = subprocess.run([sys.executable, "-P", "-c", script], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == "[]"


def test_same_and_valid_padding(capsys):
    code, out, err = _run(capsys, "size --input 16,5 --kernel 3,2 --stride 2,3 --padding valid")
    assert code == 0, err
    assert out.splitlines() == ["H: 16 * 2 + max(1 * (3 - 1) + 1 - 2, 0) = 33",
                                "W: 5 * 3 + max(1 * (2 - 1) + 1 - 3, 0) = 15"]
    code, out, err = _run(capsys, "size --input 16 --kernel 3 --stride 2 --padding same")
    assert (code, out.splitlines()) == (0, ["16 * 2 = 32"]), err
    code, out, err = _run(capsys, "size --input 16 --kernel 3 --stride 2 --padding same "
                                  "--target 32")
    assert code == 2 and "integer padding" in err
