"""The config file: lookup order, profiles, rejection of bad input; the routing table and its overrides."""

from __future__ import annotations

import pytest
from conftest import write_config

from tierflow.core.config import PROFILES, load_config
from tierflow.core.errors import ConfigError
from tierflow.core.routing import parse_tier_overrides, route


def test_builtin_profiles_route_three_tiers():
    for profile in ("anthropic", "openai", "local", "offline"):
        config = load_config(profile=profile)
        kinds = {config.provider_for(t)[1].kind for t in config.settings.routing.values()}
        assert len(config.settings.routing) == 3 and len(kinds) == 1
    assert load_config(profile="local").settings.providers["local"].base_url == "http://localhost:11434/v1"
    assert set(PROFILES) == {"anthropic", "openai", "local", "offline"}


def test_default_is_offline_and_needs_no_keys():
    config = load_config()
    assert config.settings.profile == "offline" and not config.uses_cloud


def test_lookup_order_explicit_then_env_then_vault(tmp_path, monkeypatch):
    vault = tmp_path / "vault"
    write_config(vault / ".tierflow" / "config.toml", 'profile = "openai"\n')
    env_file = write_config(tmp_path / "env.toml", 'profile = "local"\n')
    explicit = write_config(tmp_path / "explicit.toml", 'profile = "anthropic"\n')
    assert load_config(vault).settings.profile == "openai"
    monkeypatch.setenv("TIERFLOW_CONFIG", str(env_file))
    assert load_config(vault).settings.profile == "local"
    assert load_config(vault, config_path=explicit).settings.profile == "anthropic"


def test_file_overrides_a_profile_and_sources_say_so(tmp_path):
    path = write_config(tmp_path / "c.toml", 'profile = "anthropic"\n[routing]\nhigh = "standard"\n')
    config = load_config(config_path=path)
    assert config.settings.routing["high"] == "standard"
    assert config.redacted()["routing.high"] == ("standard", str(path))
    assert config.redacted()["routing.low"] == ("light", "profile:anthropic")


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        (
            '[providers.anthropic]\nkind = "anthropic"\napi_key = "sk-ant-abc123456789"\n',
            "`providers.anthropic.api_key` holds a secret inline",
        ),
        (
            '[providers.anthropic]\nkind = "anthropic"\napi_key_env = "sk-ant-abcdefghijkl0123"\n',
            "looks like an API key value",
        ),
        ('[providers.x]\nkind = "bedrock"\n', "A provider's kind is one of"),
        ('[tiers.light]\nmodel = "nowhere:model-a"\n', "`tiers.light.model` uses unknown provider 'nowhere'"),
        ('[routing]\nhigh = "galactic"\n', "`routing.high` names unknown tier 'galactic'"),
        ('[routing]\nextreme = "deep"\n', "Routing keys are the complexities"),
        ('[tiers.light]\nmodel = "claude"\n', "names no provider"),
        ('[tiers.light]\nmodel = "offline:x"\nmax_output_tokens = 0\n', "`tiers.light.max_output_tokens`"),
        ('profile = "cloudy"\n', "unknown profile 'cloudy'"),
        ("this is = = not toml", "not valid TOML"),
        ('\ufeffprofile = "offline"\n', "byte-order mark (BOM), which TOML does not allow: save it as UTF-8"),
    ],
)
def test_bad_config_names_file_key_and_fix(tmp_path, text, needle):
    path = write_config(tmp_path / "bad.toml", text)
    with pytest.raises(ConfigError) as err:
        load_config(config_path=path)
    message = str(err.value)
    assert needle in message
    assert str(path) in message


def test_missing_explicit_config_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(config_path=tmp_path / "nope.toml")


def test_routing_uses_the_config_table_and_says_so():
    config = load_config(profile="anthropic")
    r = route(config, phase="synthesise", complexity="high")
    assert (r.tier, r.provider, r.model) == ("deep", "anthropic", "claude-opus-4-6")
    assert r.rule == "routing.high (profile:anthropic)"
    assert r.tags == {
        "phase:synthesise",
        "complexity:high",
        "tier:deep",
        "model:anthropic:claude-opus-4-6",
    }


def test_front_matter_beats_config_and_override_beats_front_matter():
    config = load_config(profile="openai")
    pinned = {"tierflow_tier": "deep"}
    r = route(config, phase="collate", complexity="low", front_matter=pinned, note="Reading/x.md")
    assert (r.tier, r.rule) == ("deep", "front-matter:Reading/x.md")
    per_phase = {"tierflow_tier": {"collate": "standard"}}
    assert route(config, phase="collate", complexity="low", front_matter=per_phase).tier == "standard"
    assert route(config, phase="draft", complexity="low", front_matter=per_phase).tier == "light"
    r = route(
        config,
        phase="collate",
        complexity="low",
        front_matter=pinned,
        overrides=parse_tier_overrides(["collate=light"]),
    )
    assert (r.tier, r.rule) == ("light", "override")
    r = route(config, phase="draft", complexity="medium", overrides=parse_tier_overrides(["deep"]))
    assert (r.tier, r.rule) == ("deep", "override")


def test_unknown_complexity_or_tier_is_rejected():
    config = load_config()
    with pytest.raises(ConfigError, match="unknown complexity 'extreme'"):
        route(config, phase="collate", complexity="extreme")
    with pytest.raises(ConfigError, match="unknown tier 'huge'"):
        route(config, phase="collate", complexity="low", overrides={"collate": "huge"})
    with pytest.raises(ConfigError, match="PHASE=TIER"):
        parse_tier_overrides(["collate="])


def test_route_is_immutable():
    r = route(load_config(), phase="collate", complexity="low")
    with pytest.raises(AttributeError):
        r.tier = "deep"  # type: ignore[misc]


def test_a_partial_tier_or_provider_table_is_laid_over_the_profile_field_by_field(tmp_path):
    path = write_config(
        tmp_path / "c.toml",
        'profile = "anthropic"\n[tiers.deep]\nconcurrency = 1\n[providers.anthropic]\ntimeout_s = 30\n',
    )
    config = load_config(config_path=path)
    deep = config.settings.tiers["deep"]
    assert (deep.model, deep.max_output_tokens, deep.concurrency) == ("anthropic:claude-opus-4-6", 4096, 1)
    anthropic = config.settings.providers["anthropic"]
    assert (anthropic.kind, anthropic.api_key_env, anthropic.timeout_s) == ("anthropic", "ANTHROPIC_API_KEY", 30)
    shown = config.redacted()
    assert shown["tiers.deep.concurrency"] == (1, str(path))
    assert shown["tiers.deep.model"] == ("anthropic:claude-opus-4-6", "profile:anthropic")
    assert shown["providers.anthropic.timeout_s"] == (30, str(path))


def test_a_provider_whose_kind_the_file_changes_inherits_nothing_from_the_profile(tmp_path):
    path = write_config(
        tmp_path / "c.toml",
        'profile = "local"\n[providers.local]\nkind = "openai"\napi_key_env = "OPENAI_API_KEY"\n',
    )
    local = load_config(config_path=path).settings.providers["local"]
    assert (local.kind, local.base_url, local.timeout_s) == ("openai", None, 120.0)


def test_config_sources_never_credit_a_default_to_the_file(tmp_path):
    path = write_config(tmp_path / "c.toml", '[budgets.weekly]\nusd = 5\n[vault]\ntimezone = "Europe/London"\n')
    shown = load_config(config_path=path).redacted()
    assert shown["budgets.weekly.usd"] == (5.0, str(path))
    assert shown["budgets.weekly.period"] == ("run", "default")
    assert shown["budgets.weekly.policy"] == ("halt", "default")
    assert shown["vault.timezone"] == ("Europe/London", str(path))
    assert shown["vault.runs_folder"] == ("tierflow/Runs", "default")
    assert shown["providers.offline.timeout_s"] == (120.0, "default")
    assert shown["providers.offline.kind"] == ("offline", "profile:offline")
