# shellcheck shell=bash
# Shared by scripts/lint-azure and scripts/lint-gcp (sourced, not run): the virtualenv with
# checkov and the Bicep parsers, ${PROVISION_VENV:-<repo>/.venv}/checkov.
#
#   source "$repo_root/scripts/checkov-venv.sh"
#   checkov_venv_ensure lint-gcp      # installs or updates it when needed, prefixing messages
#   "$checkov" ...; "$checkov_python" ...
#
# Pinned versions, installed when missing or of another version (CHECKOV_VERSION=x.y.z
# overrides checkov's). One venv for both lints, with one pinned set, so neither reinstalls what
# the other installed. Not the project venv itself: checkov pins boto3==1.35.49 and networkx<2.7,
# which would downgrade what moto and cfn-lint use there. checkov brings PyYAML and python-hcl2
# (the HCL parser it uses for Terraform), which scripts/lint-gcp uses too.

: "${repo_root:?checkov-venv.sh: set repo_root before sourcing it}"
checkov_venv="${PROVISION_VENV:-$repo_root/.venv}/checkov"
checkov="$checkov_venv/bin/checkov"
checkov_python="$checkov_venv/bin/python"
checkov_version="${CHECKOV_VERSION:-3.3.30}"
checkov_tools=(
  "checkov==$checkov_version"
  "tree-sitter==0.26.1"
  "tree-sitter-bicep==1.1.0"
)

checkov_venv_installed() {
  # "checkov==3.3.30 tree-sitter==... tree-sitter-bicep==..." as installed; empty when broken.
  "$checkov_python" - 2>/dev/null <<'PY' || true
import importlib.metadata as m
print(" ".join(f"{n}=={m.version(n)}" for n in ("checkov", "tree-sitter", "tree-sitter-bicep")))
PY
}

checkov_venv_ensure() {
  local who="${1:-checkov-venv}"
  if [[ ! -x "$checkov" || "$(checkov_venv_installed)" != "${checkov_tools[*]}" ]]; then
    if [[ ! -x "$checkov_python" ]]; then
      echo "$who: creating virtualenv $checkov_venv"
      python3 -m venv "$checkov_venv"
    fi
    echo "$who: installing ${checkov_tools[*]} into $checkov_venv"
    "$checkov_venv/bin/pip" install -q --disable-pip-version-check "${checkov_tools[@]}"
  fi
}
