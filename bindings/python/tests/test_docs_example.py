"""docs/bindings.md's complete example, run as the text stands, against two real relays."""

import re
import subprocess
import sys
from pathlib import Path

DOC = Path(__file__).resolve().parents[3] / "docs" / "bindings.md"


def example_source() -> str:
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)
    found = [b for b in blocks if b.startswith("# example.py")]
    assert len(found) == 1, "docs/bindings.md must have one ```python block starting `# example.py`"
    return found[0]


def test_the_documented_example_runs(tmp_path, relays):
    script = tmp_path / "example.py"
    script.write_text(example_source())
    out = subprocess.run(
        [sys.executable, str(script), relays[0], relays[1], str(tmp_path / "profiles")],
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert "bob got from alice: Hello Bob!" in lines
    assert "alice got from bob: Hi Alice!" in lines
    assert "as expected: wrong passphrase (or the profile file is damaged)" in lines
    assert lines[0].startswith("connected: [('bob', <ContactState.CONNECTED")
