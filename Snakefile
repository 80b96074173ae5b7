# infodissect: the workflow entry point (run `snakemake --cores all` here).
#
# Loads config/config.yaml (merged with any --configfile / --config), validates
# it against src/infodissect/schemas/config.schema.yaml plus semantic checks, fills in
# defaults, and includes one rule file per stage. `rule all` is the default
# target. Keep this file the real entry point: a Snakefile that only does
# `include: "workflow/Snakefile"` runs nothing (include keeps the default target).

from snakemake.exceptions import WorkflowError
from snakemake.utils import min_version

min_version("9.17")  # a function as a rule's priority (workflow/rules/common.smk: critical_path)


configfile: "config/config.yaml"


from infodissect.config import ConfigError, validate_config

try:
    _validated = validate_config(config)
except ConfigError as _error:
    raise WorkflowError(f"invalid configuration: {_error}") from None
config.update(_validated)


include: "workflow/rules/common.smk"


rule all:
    default_target: True
    input:
        all_targets(),


localrules:
    all,


include: "workflow/rules/stimuli.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/activations.smk"
include: "workflow/rules/mi.smk"
include: "workflow/rules/analyses.smk"
