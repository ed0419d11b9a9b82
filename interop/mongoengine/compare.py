"""Compare pytest junit reports: which tests pass in each run, and what differs from the first."""

import sys
import xml.etree.ElementTree as ET


def outcomes(path):
    result = {}
    for case in ET.parse(path).iter("testcase"):
        name = f"{case.get('classname')}::{case.get('name')}"
        tags = {child.tag for child in case}
        result[name] = ("failed" if tags & {"failure", "error"} else "skipped" if "skipped" in tags else "passed")
    return result


def main(paths):
    runs = [(p, outcomes(p)) for p in paths]
    base_path, base = runs[0]
    base_pass = {n for n, o in base.items() if o == "passed"}
    for path, run in runs:
        passed = {n for n, o in run.items() if o == "passed"}
        counts = {o: sum(1 for v in run.values() if v == o) for o in ("passed", "failed", "skipped")}
        print(f"{path}: {len(run)} tests, {counts}")
        if path != base_path:
            lost, gained = sorted(base_pass - passed), sorted(passed - base_pass)
            print(f"  vs {base_path}: {len(lost)} tests pass there but not here, {len(gained)} the other way")
            for name in lost:
                print(f"    - {name}")
            for name in gained:
                print(f"    + {name}")


if __name__ == "__main__":
    main(sys.argv[1:])
