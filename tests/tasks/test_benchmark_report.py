import json

import pytest

from sfm.tasks.benchmark_report import main, markdown_table, rows_of


def test_rows_of_accepts_the_three_layouts():
    rows = [{"a": 1}]
    assert rows_of(rows) is rows
    assert rows_of({"rows": rows, "x": 2}) is rows
    assert rows_of({"results": rows}) is rows
    assert rows_of({"a": 1.5}) == [{"a": 1.5}]


def test_table_has_union_of_scalar_columns():
    table = markdown_table([{"model": "tiny", "s": 0.123456}, {"model": "small", "mb": 12, "nested": {"x": 1}}])
    lines = table.splitlines()
    assert lines[0] == "| model | s | mb |"
    assert lines[2] == "| tiny | 0.1235 |  |"
    assert lines[3] == "| small |  | 12 |"


def test_report_writes_json_and_markdown(tmp_path):
    (tmp_path / "a.json").write_text(json.dumps({"rows": [{"workers": 0, "structures_per_s": 10.0}]}))
    (tmp_path / "b.json").write_text(json.dumps({"run": {"samples_per_s": 2.5}, "metrics": {}}))
    main(["--out", str(tmp_path / "out"), f"loader={tmp_path / 'a.json'}", f"sampling={tmp_path / 'b.json'}#run"])
    report = json.loads((tmp_path / "out" / "benchmark.json").read_text())
    assert report["machine"]["cpu_count"] >= 1
    assert report["benchmarks"]["sampling"] == {"samples_per_s": 2.5}
    page = (tmp_path / "out" / "benchmark.md").read_text()
    assert "## loader" in page and "| 0 | 10 |" in page


def test_columns_pick_and_readme_block_is_replaced(tmp_path):
    rows = [{"model": "tiny", "s": 0.5, "device": "cpu"}]
    assert markdown_table(rows, ["model", "s"]).splitlines()[0] == "| model | s |"
    (tmp_path / "a.json").write_text(json.dumps(rows))
    readme = tmp_path / "README.md"
    readme.write_text("# x\n\nbefore\n<!-- benchmark:start -->\nold table\n<!-- benchmark:end -->\nafter\n")
    main(["--out", str(tmp_path / "out"), "--readme", str(readme), f"backbone={tmp_path / 'a.json'}@model,s"])
    text = readme.read_text()
    assert "old table" not in text and text.startswith("# x\n\nbefore\n") and text.endswith("after\n")
    assert "### backbone" in text and "| tiny | 0.5 |" in text and "device" not in text.split("start -->")[1]


def test_readme_without_markers_is_refused_and_left_as_is(tmp_path):
    (tmp_path / "a.json").write_text(json.dumps([{"a": 1}]))
    readme = tmp_path / "README.md"
    readme.write_text("no markers\n")
    with pytest.raises(SystemExit, match="no '<!-- benchmark:start -->'"):
        main(["--out", str(tmp_path / "out"), "--readme", str(readme), f"x={tmp_path / 'a.json'}"])
    assert readme.read_text() == "no markers\n"


def test_junit_xml_input_is_one_row_per_test(tmp_path):
    (tmp_path / "t.xml").write_text(
        '<testsuites><testsuite name="pytest" tests="3">'
        '<testcase classname="tests.a" name="test_ok" time="0.5"/>'
        '<testcase classname="tests.a" name="test_bad" time="1.0"><failure message="x">trace</failure></testcase>'
        '<testcase classname="tests.b" name="test_gpu" time="0"><skipped message="no gpu"/></testcase>'
        "</testsuite></testsuites>"
    )
    main(["--out", str(tmp_path / "out"), f"device tests={tmp_path / 't.xml'}"])
    tests = json.loads((tmp_path / "out" / "benchmark.json").read_text())["benchmarks"]["device tests"]
    assert (tests["tests"], tests["passed"], tests["failed"], tests["skipped"]) == (3, 1, 1, 1)
    assert tests["rows"][1] == {"test": "tests.a::test_bad", "outcome": "failed", "seconds": 1.0}
    assert "| tests.a::test_bad | failed | 1 |" in (tmp_path / "out" / "benchmark.md").read_text()
