"""The README's benchmark tables are the committed results in benchmarks/results/, as benchmarks.report renders them."""

import json
import shutil

from benchmarks import report


def test_readme_tables_match_the_committed_results():
    readme = report.README.read_text()
    expected = report.readme_with_tables(readme, report.readme_tables(report.readme_documents()))
    assert readme == expected, "README.md differs from benchmarks/results/: python -m benchmarks.report --readme"


def test_tables_show_where_when_and_with_which_versions_they_were_measured():
    documents = report.readme_documents()
    assert {d["environment"]["device"] for d in documents} == {"cuda", "cpu"}
    for document in documents:
        tables = report.readme_tables([document])
        env = document["environment"]
        for fact in (env["device_name"], env["date_utc"][:10], env["torch"], env["triton"], env["git_commit"][:12]):
            assert fact in tables
        first = document["results"][0]
        assert f"| {first['config']} | {first['cell']} | {first['dtype']} | {first['mode']} |" in tables


def test_gpu_results_come_before_the_cpu_ones(tmp_path):
    shutil.copy(report.RESULTS / "cpu.json", tmp_path / "a-cpu.json")
    gpu = json.loads((tmp_path / "a-cpu.json").read_text())
    gpu["environment"] |= {"device": "cuda", "device_name": "NVIDIA H100 80GB HBM3", "cuda": "13.0", "cudnn": 91900}
    (tmp_path / "nvidia-h100-80gb-hbm3.json").write_text(json.dumps(gpu))
    gpu_document, cpu_document = report.readme_documents(tmp_path)
    assert gpu_document["environment"]["device_name"] == "NVIDIA H100 80GB HBM3"
    assert cpu_document["environment"]["device"] == "cpu"
    assert "CUDA 13.0, cuDNN 91900" in report.readme_tables([gpu_document])
