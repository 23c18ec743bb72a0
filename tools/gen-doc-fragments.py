# SPDX-License-Identifier: GPL-3.0-or-later
"""Regenerate the DEFINITION doc fragment (sar_backup_run's `definition`
suboptions) from the job options in plugins/doc_fragments/job.py DOCUMENTATION.

ansible-test reads doc fragments as string literals, so the nested copy is
written out here instead of being computed at import time;
tests/unit/plugins/doc_fragments/test_job_fragment.py fails when it is stale."""

from __future__ import annotations

import ast
import os
import re
import sys
import textwrap

PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "plugins", "doc_fragments", "job.py")
HEAD = """
options:
  definition:
    description:
      - An inline job that runs once and is not saved (web UI step 4 "run only"), with the options of
        M(sar.backup.sar_backup_job) (O(definition.state) does not apply).
      - Mutually exclusive with O(job).
    type: dict
    suboptions:
"""


def derive(documentation: str) -> str:
    options = documentation.split("options:\n", 1)[1]
    options = textwrap.dedent(options)
    # Option references inside the nested copy point at definition.<option>.
    options = re.sub(r"O\((?!definition\.)", "O(definition.", options.strip("\n"))
    return HEAD + textwrap.indent(options, " " * 6) + "\n"


def main() -> int:
    source = open(PATH, encoding="utf-8").read()
    tree = ast.parse(source)
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef))
    doc = next(n.value.value for n in cls.body if isinstance(n, ast.Assign) and n.targets[0].id == "DOCUMENTATION")
    wanted = derive(doc)
    new = re.sub(r'(    DEFINITION = r""").*?(""")', lambda m: m.group(1) + wanted + m.group(2), source, flags=re.S)
    if "--check" in sys.argv:
        return 0 if new == source else 1
    with open(PATH, "w", encoding="utf-8") as handle:
        handle.write(new)
    return 0


if __name__ == "__main__":
    sys.exit(main())
