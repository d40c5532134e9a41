"""The README's benchmark tables are the committed results in benchmarks/results/, as benchmarks.report renders them."""

import json
import shutil

from benchmarks import report


def test_readme_tables_match_the_committed_results():
    readme = report.README.read_text()
    expected = report.readme_with_tables(readme, report.readme_tables(report.readme_documents()))
    assert readme == expected, "README.md differs from benchmarks/results/: python -m benchmarks.report --readme"


def test_tables_show_where_when_and_with_which_versions_they_were_measured():
    (document,) = report.readme_documents()
    tables = report.readme_tables([document])
    env = document["environment"]
    for fact in (env["device_name"], env["date_utc"][:10], env["torch"], env["triton"], env["git_commit"][:12]):
        assert fact in tables
    first = document["results"][0]
    assert f"| {first['config']} | {first['cell']} | {first['dtype']} | {first['mode']} |" in tables


def test_gpu_results_replace_the_cpu_ones(tmp_path):
    shutil.copy(report.RESULTS / "cpu.json", tmp_path / "cpu.json")
    gpu = json.loads((tmp_path / "cpu.json").read_text())
    gpu["environment"] |= {"device": "cuda", "device_name": "NVIDIA H100 80GB HBM3", "cuda": "13.0", "cudnn": 91900}
    (tmp_path / "nvidia-h100-80gb-hbm3.json").write_text(json.dumps(gpu))
    (document,) = report.readme_documents(tmp_path)
    assert document["environment"]["device_name"] == "NVIDIA H100 80GB HBM3"
    assert "CUDA 13.0, cuDNN 91900" in report.readme_tables([document])
