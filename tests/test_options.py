"""Options: namespaced per component, flat img2dataset names for the built-ins, one parse."""

from __future__ import annotations

import types

import attrs
import pytest
import yaml

from any2ds import Processor, Writer, hookimpl, option
from any2ds.errors import ConfigError
from any2ds.manager import PluginHost
from any2ds.options import OptionSchema, read_keyword_plugins, read_plugins


def _size_at_least_one(_inst, attribute, value):
    if value < 1:
        raise ValueError(f"{attribute.name} must be at least 1, got {value}")


class Thumbnail(Processor):
    name = "thumbnail"

    @attrs.frozen
    class Options:
        size: int = option(64, "Thumbnail side in pixels.", _size_at_least_one)
        image_size: int = option(3, "Same name as the image processor's flat option.")


class Sprite(Processor):
    """A second plugin declaring options with the same names as Thumbnail."""

    name = "sprite"

    @attrs.frozen
    class Options:
        size: int = option(8, "Sprite side in pixels.")

        def __attrs_post_init__(self):
            if self.size == 13:
                raise ValueError("size 13 is unlucky")


class ProcessorsWriter(Writer):
    """A component named like a core option."""

    name = "processors"

    @attrs.frozen
    class Options:
        level: int = option(1, "Compression level.")


def _plugin(*classes):
    def register_processors(register):
        for cls in classes:
            if issubclass(cls, Processor):
                register(cls)

    def register_writers(register):
        for cls in classes:
            if issubclass(cls, Writer):
                register(cls)

    return types.SimpleNamespace(any2ds_register_processors=hookimpl(register_processors),
                                 any2ds_register_writers=hookimpl(register_writers))


@pytest.fixture(scope="module")
def schema() -> OptionSchema:
    host = PluginHost.load([_plugin(Thumbnail), _plugin(Sprite), _plugin(ProcessorsWriter)])
    return OptionSchema(host)


def parse(schema: OptionSchema, *argv: str):
    return schema.parse_args(read_plugins(["--url_list", "in.txt", *argv])[1])


def test_component_options_are_namespaced_on_the_cli(schema):
    config = parse(schema, "--thumbnail.size", "32", "--sprite.size", "16")
    assert config.options_for(Thumbnail).size == 32 and config.options_for(Sprite).size == 16


def test_the_same_option_name_in_two_plugins_breaks_nothing(schema):
    config = parse(schema)
    assert config.options_for(Thumbnail).size == 64 and config.options_for(Sprite).size == 8
    # A third-party option named like a built-in's flat flag does not take that flag.
    config = parse(schema, "--image_size", "300", "--thumbnail.image_size", "7")
    assert config.component_values["image"]["image_size"] == 300
    assert config.options_for(Thumbnail).image_size == 7


def test_yaml_sections_and_flat_builtin_keys(schema, tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("image_size: 128\nthumbnail:\n  size: 20\nhttp:\n  timeout: 3\nallow_private_networks: true\n")
    config = parse(schema, "--config", str(path))
    assert config.component_values["image"]["image_size"] == 128
    assert config.component_values["http"] == {**config.component_values["http"], "timeout": 3.0,
                                               "allow_private_networks": True}
    assert config.options_for(Thumbnail).size == 20


@pytest.mark.parametrize("value", ["5", "[1, 2]", "text"])
def test_a_component_section_that_is_not_a_mapping_is_one_clear_error(schema, tmp_path, value):
    path = tmp_path / "run.yaml"
    path.write_text(f"thumbnail: {value}\n")
    expected = ("option section 'thumbnail' must map option names of processor 'thumbnail' "
                "to values (thumbnail: {size: 64}), not ")
    with pytest.raises(ConfigError) as raised:
        parse(schema, "--config", str(path))
    assert str(raised.value).startswith(expected)
    with pytest.raises(ConfigError) as raised:
        schema.parse_kwargs({"url_list": "in.txt", "thumbnail": yaml.safe_load(value)})
    assert str(raised.value).startswith(expected)
    assert schema.parse_kwargs({"url_list": "in.txt", "thumbnail": None}).options_for(Thumbnail).size == 64


def test_keyword_arguments_flat_nested_and_dotted(schema):
    config = schema.parse_kwargs({"url_list": "in.txt", "image_size": 99, "thumbnail": {"size": 5},
                                  "sprite.size": 6, "image.resize_mode": "keep_ratio"})
    assert config.component_values["image"]["image_size"] == 99
    assert config.component_values["image"]["resize_mode"] == "keep_ratio"
    assert config.options_for(Thumbnail).size == 5 and config.options_for(Sprite).size == 6



def test_a_config_keyword_reads_its_file_as_the_flag_does(schema, tmp_path):
    """``download(config=...)``: the file's flat names shared by both fetchers set each, as
    ``--config`` does; a keyword wins over the file, also over one option of a file's section."""
    path = tmp_path / "run.yaml"
    path.write_text("user_agent_token: img2dataset\ndisallowed_header_directives: [noai, noindex]\n"
                    "retries: 2\nallow_private_networks: true\nimage_size: 128\n"
                    "thumbnail:\n  size: 20\nsprite:\n  size: 9\nplugins: [a.py]\n")
    from_flag = parse(schema, "--config", str(path))
    from_keyword = schema.parse_kwargs({"url_list": "in.txt", "config": str(path)})
    assert from_keyword.component_values == from_flag.component_values
    for fetcher in ("http", "fast_http"):
        assert {name: from_keyword.component_values[fetcher][name] for name in (
            "user_agent_token", "disallowed_header_directives", "retries", "allow_private_networks")} == {
            "user_agent_token": "img2dataset", "disallowed_header_directives": ["noai", "noindex"],
            "retries": 2, "allow_private_networks": True}
    plugins, read_once = read_keyword_plugins({"url_list": "in.txt", "config": str(path)})
    assert plugins == ["a.py"] and read_once["config"]["retries"] == 2
    assert schema.parse_kwargs(read_once).component_values == from_keyword.component_values
    assert read_keyword_plugins({"config": str(path), "plugins": "b.py"})[0] == ["b.py"]

    overridden = schema.parse_kwargs({"url_list": "in.txt", "config": str(path), "retries": 0,
                                      "thumbnail": {"size": 5}, "fast_http.timeout": 2})
    assert overridden.component_values["http"]["retries"] == overridden.component_values["fast_http"]["retries"] == 0
    assert overridden.options_for(Thumbnail).size == 5 and overridden.options_for(Sprite).size == 9
    assert overridden.component_values["fast_http"]["timeout"] == 2.0
    assert overridden.component_values["http"]["user_agent_token"] == "img2dataset"

    with pytest.raises(ConfigError, match=r"^config .*missing\.yaml: .*No such file"):
        schema.parse_kwargs({"url_list": "in.txt", "config": str(tmp_path / "missing.yaml")})
    path.write_text("retires: 2\n")
    with pytest.raises(ConfigError, match=r"unknown option\(s\): 'retires' \(did you mean 'retries'\?\)"):
        schema.parse_kwargs({"url_list": "in.txt", "config": str(path)})


def test_none_on_the_command_line_is_null_as_in_img2dataset(schema):
    """img2dataset's command line (python-fire) reads None as Python's None, for any flag."""
    config = parse(schema, "--caption_col", "None", "--save_additional_columns=None", "--compute_hash", "None",
                   "--verify_hash", "None", "--user_agent_token=None", "--thumbnail.size", "7")
    assert config.core.caption_col is None and config.core.save_additional_columns is None
    assert config.component_values["hash"] == {**config.component_values["hash"], "compute_hash": None,
                                               "verify_hash": None}
    for fetcher in ("http", "fast_http"):
        assert config.component_values[fetcher]["user_agent_token"] is None
    assert parse(schema, "--caption_col", "caption").core.caption_col == "caption"

def test_builtin_options_answer_to_both_names(schema):
    flat = parse(schema, "--image_size", "64", "--timeout", "2")
    nested = parse(schema, "--image.image_size", "64", "--http.timeout", "2", "--fast_http.timeout", "2")
    assert flat.component_values == nested.component_values


def test_a_flat_name_shared_by_builtins_sets_each(schema):
    """Both http fetchers declare img2dataset's flags: --timeout sets the timeout of each, by flag,
    keyword or YAML key; a namespaced key sets its own only."""
    for config in (parse(schema, "--timeout", "3", "--allow_private_networks"),
                   parse(schema, "--timeout=3", "--allow_private_networks", "true"),
                   schema.parse_kwargs({"url_list": "in.txt", "timeout": 3, "allow_private_networks": True})):
        for fetcher in ("http", "fast_http"):
            assert config.component_values[fetcher]["timeout"] == 3.0
            assert config.component_values[fetcher]["allow_private_networks"] is True
    config = parse(schema, "--timeout", "3", "--fast_http.retries", "2")
    assert config.component_values["fast_http"]["retries"] == 2 and config.component_values["http"]["retries"] == 0


def test_help_lists_each_shared_flat_name_with_the_options_it_sets(schema):
    """img2dataset's users find --timeout in --help, though it is no parser alias: it names both
    options it sets and adds nothing to a parsed namespace (--print_config stays re-readable)."""
    text = " ".join(schema.parser().format_help().split())
    assert ("--timeout TIMEOUT Sets fast_http.timeout and http.timeout: Total seconds per request attempt: "
            "connect, redirects and the whole body. (type: float, default: 10.0)") in text
    assert "--allow_private_networks [{true,false}] Sets fast_http.allow_private_networks and" in text
    assert "--image_size IMAGE_SIZE" in text  # an unshared flat name stays an alias of its option
    namespace = schema.parser().parse_object(schema.nest({"url_list": "in.txt", "timeout": 5}))
    assert "timeout" not in namespace.as_dict() and namespace.as_dict()["http"]["timeout"] == 5.0


def test_a_name_taken_by_a_core_option_gets_its_kind(schema):
    assert schema.namespaces[("writer", "processors")] == "processors_writer"
    config = parse(schema, "--processors_writer.level", "9", "--processors", "[image]")
    assert config.options_for(ProcessorsWriter).level == 9 and config.core.processors == ["image"]


def test_unselected_components_do_not_validate(schema):
    # Sprite refuses 13, but the run does not use Sprite: its options are never built.
    config = parse(schema, "--sprite.size", "13")
    assert config.core.processor_names() == ["image"]
    with pytest.raises(ConfigError, match="processor 'sprite': size 13 is unlucky"):
        config.options_for(Sprite)


def test_bad_values_and_unknown_names_are_one_line_errors(schema):
    with pytest.raises(ConfigError, match=r"'resize_mod' \(did you mean 'resize_mode'\?\)"):
        parse(schema, "--resize_mod", "border")
    with pytest.raises(ConfigError, match=r"'thumbnail.sise' \(did you mean 'thumbnail.size'\?\)"):
        schema.parse_kwargs({"url_list": "x", "thumbnail": {"sise": 3}})
    with pytest.raises(ConfigError, match="thumbnail.size") as error:
        parse(schema, "--thumbnail.size", "big")
    assert "\n" not in str(error.value)
    with pytest.raises(ConfigError, match="url_list is required"):
        schema.parse_kwargs({"image_size": 3})


def test_flat_values_name_every_option_as_users_do(schema):
    values = schema.flat_values(parse(schema, "--image_size", "32", "--thumbnail.size", "2"))
    assert values["image_size"] == 32 and values["thumbnail.size"] == 2 and values["url_list"] == "in.txt"
    assert values["timeout"] == 10.0


def test_builtin_flat_names_are_unique():
    """The built-ins' flat names are img2dataset's flags: each must reach one option, or the same
    option declared alike by built-ins of one kind (--timeout: the http fetchers' shared Options)."""
    host = PluginHost.load()
    schema = OptionSchema(host)
    flats = [spec.flat for spec in schema.specs if spec.flat]
    for flat in set(flats):
        fields = {spec.field for spec in schema.specs if spec.flat == flat}
        assert len(fields) == 1, flat
    assert not set(flats) & {spec.key for spec in schema.specs if spec.namespace is None}
