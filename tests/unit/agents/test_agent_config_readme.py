"""The README's complete ``agent.toml`` is complete: it sets every key the agent reads, and the
agent loads it as written."""

from __future__ import annotations

import re
from pathlib import Path

from edgekiln.agents import config

README = Path(__file__).resolve().parents[3] / "README.md"


def readme_agent_toml() -> str:
    text = README.read_text(encoding="utf-8")
    start = text.index("A complete `agent.toml`")
    found = re.compile(r"```toml\n(.*?)```", re.S).search(text, start)
    assert found is not None, "no TOML block after 'A complete `agent.toml`'"
    return found.group(1)


def test_the_readme_agent_toml_sets_every_key_and_loads(tmp_path):
    import tomllib

    data = tomllib.loads(readme_agent_toml())
    written = {f"{section}.{key}" for section, table in data.items() for key in table}
    expected = {f"{section}.{key}" for section, keys in config._SCHEMA.items() for key in keys}
    assert written == expected
    path = tmp_path / "agent.toml"
    path.write_text(readme_agent_toml())
    loaded = config.load_config(path)
    assert (loaded.device.name, loaded.device.fleet) == ("pi-0001", "warehouse")
    assert loaded.fleet.token_file == tmp_path / "device-token"
    assert loaded.deploy.trusted_keys == (tmp_path / "keys/release.pub", tmp_path / "keys/next.pub")
    assert loaded.deploy.local_failure_handling == "ROLLBACK_ON_FAILURE"
