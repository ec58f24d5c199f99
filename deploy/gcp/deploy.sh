#!/usr/bin/env bash
# Build the provision-cloudrun image and deploy it to Cloud Run (deploy/gcp/README.md).
#
#   deploy/gcp/deploy.sh --project PROJECT --registry-id REGISTRY [options]
#
# Steps, each printed with the command it runs:
#   1. check the inputs, and (unless --dry-run) that gcloud is logged in and every secret the
#      service reads has a version in Secret Manager
#   2. build the image and push it to Artifact Registry:
#      REGION-docker.pkg.dev/PROJECT/REPOSITORY/provision-cloudrun:TAG
#      (--builder cloud: gcloud builds submit with deploy/gcp/cloudbuild.yaml, the default, no
#      local Docker needed; --builder docker: docker build + docker push)
#   3. deploy: render deploy/gcp/service.yaml (the one description of the service: its
#      settings, secrets, scaling and probes) with the options below, `gcloud run services
#      replace` it, and set the public invoker binding (services replace does not touch IAM)
#   4. print the URL and check GET /healthz answers 200
#
# Options (each fills a ${PLACEHOLDER} of deploy/gcp/service.yaml; infra/gcp makes the service
# account, repository and secrets with the same names):
#   --project ID              GCP project of the service (required)
#   --registry-id ID          CB_REGISTRY_ID, the ClearBlade IoT Core registry (required)
#   --region REGION           Cloud Run and Artifact Registry region (us-central1)
#   --registry-project ID     GCP_PROJECT_ID, the registry's project (default: --project)
#   --registry-region REGION  GCP_REGION, the registry's region (default: --region)
#   --service NAME            Cloud Run service (balena-provision)
#   --service-account EMAIL   runtime identity (balena-provision-run@PROJECT.iam.gserviceaccount.com)
#   --repository NAME         Artifact Registry repository (balena-provision)
#   --tag TAG                 image tag (git commit, with -dirty for uncommitted changes)
#   --image IMAGE             deploy this image; no build (implies --skip-build)
#   --skip-build              deploy REGION-docker.pkg.dev/.../provision-cloudrun:TAG as it is
#   --build-only              build and push, do not deploy
#   --builder cloud|docker    how to build (cloud)
#   --balena-api-url URL      BALENA_API_URL (https://api.balena-cloud.com)
#   --key-type TYPE           PROVISION_KEY_TYPE: ec-p256 or rsa-2048 (ec-p256)
#   --request-budget-ms MS    PROVISION_REQUEST_BUDGET_MS (25000)
#   --rust-log FILTER         RUST_LOG (info, or a filter such as info,provision_core=debug)
#   --no-operator-token       do not pass PROVISION_OPERATOR_TOKEN (no operator token at all)
#   --accept-anonymous-callers  PROVISION_ALLOW_UNAUTHENTICATED=true: the function accepts
#                             callers with no credential at all (the published functions'
#                             behaviour, for old cloud-relay fleets). Not the default.
#   --private                 no public invoker (allUsers' roles/run.invoker binding removed):
#                             Cloud Run IAM in front (callers need a Google ID token besides
#                             their bearer token; devices have none)
#   --timeout SECONDS         request timeout (60)     --concurrency N    per instance (40)
#   --min-instances N         (0)                      --max-instances N  (10)
#   --cpu CPU                 ("1")                    --memory SIZE      (256Mi)
#   --dry-run                 print the commands, run nothing (no gcloud needed)
#   --print-service-yaml      print deploy/gcp/service.yaml rendered with these options, and exit
#   -h, --help                this text
#
# Why --allow-unauthenticated (a public invoker) by default: devices call the service with their
# own balena API key as bearer token, and the function checks it against balenaCloud (or the
# operator token) before it does anything; devices have no Google identity, so Cloud Run IAM in
# front would refuse every device. "Unauthenticated" here means only that Cloud Run does not ask
# for a Google identity; the function still refuses any request without a valid credential.
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$repo_root"

die() { echo "deploy: $*" >&2; exit 2; }
usage() { sed -n '2,/^set -euo pipefail$/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; }

project="" registry_id="" region="us-central1" registry_project="" registry_region=""
service="balena-provision" service_account="" repository="balena-provision" tag="" image=""
skip_build=false build_only=false builder="cloud"
balena_api_url="https://api.balena-cloud.com" key_type="ec-p256" request_budget_ms=25000
rust_log="info" operator_token=true anonymous_callers=false public_invoker=true
timeout=60 concurrency=40 min_instances=0 max_instances=10 cpu="1" memory="256Mi"
dry_run=false print_yaml=false

need_value() { [[ $# -ge 2 && -n "$2" ]] || die "$1 needs a value (see --help)"; }
while [[ $# -gt 0 ]]; do
  case "$1" in
    -h|--help) usage; exit 0 ;;
    --project) need_value "$@"; project="$2"; shift 2 ;;
    --registry-id) need_value "$@"; registry_id="$2"; shift 2 ;;
    --region) need_value "$@"; region="$2"; shift 2 ;;
    --registry-project) need_value "$@"; registry_project="$2"; shift 2 ;;
    --registry-region) need_value "$@"; registry_region="$2"; shift 2 ;;
    --service) need_value "$@"; service="$2"; shift 2 ;;
    --service-account) need_value "$@"; service_account="$2"; shift 2 ;;
    --repository) need_value "$@"; repository="$2"; shift 2 ;;
    --tag) need_value "$@"; tag="$2"; shift 2 ;;
    --image) need_value "$@"; image="$2"; skip_build=true; shift 2 ;;
    --skip-build) skip_build=true; shift ;;
    --build-only) build_only=true; shift ;;
    --builder) need_value "$@"; builder="$2"; shift 2 ;;
    --balena-api-url) need_value "$@"; balena_api_url="$2"; shift 2 ;;
    --key-type) need_value "$@"; key_type="$2"; shift 2 ;;
    --request-budget-ms) need_value "$@"; request_budget_ms="$2"; shift 2 ;;
    --rust-log) need_value "$@"; rust_log="$2"; shift 2 ;;
    --no-operator-token) operator_token=false; shift ;;
    --accept-anonymous-callers) anonymous_callers=true; shift ;;
    --private) public_invoker=false; shift ;;
    --timeout) need_value "$@"; timeout="$2"; shift 2 ;;
    --concurrency) need_value "$@"; concurrency="$2"; shift 2 ;;
    --min-instances) need_value "$@"; min_instances="$2"; shift 2 ;;
    --max-instances) need_value "$@"; max_instances="$2"; shift 2 ;;
    --cpu) need_value "$@"; cpu="$2"; shift 2 ;;
    --memory) need_value "$@"; memory="$2"; shift 2 ;;
    --dry-run) dry_run=true; shift ;;
    --print-service-yaml) print_yaml=true; shift ;;
    *) die "unknown option $1 (see --help)" ;;
  esac
done

# ---- 1. inputs --------------------------------------------------------------------------
[[ $print_yaml == true ]] || echo "deploy: 1/4 checking the inputs"
matches() { [[ "$2" =~ $3 ]] || die "$1 '$2' is not valid: $4"; }
int_in() { [[ "$2" =~ ^[0-9]+$ ]] && (( 10#$2 >= $3 && 10#$2 <= $4 )) || die "$1 '$2' must be a whole number from $3 to $4"; }

[[ -n "$project" ]] || die "--project is required (see --help)"
[[ -n "$registry_id" ]] || die "--registry-id is required: the ClearBlade IoT Core registry (see --help)"
registry_project="${registry_project:-$project}"
registry_region="${registry_region:-$region}"
service_account="${service_account:-balena-provision-run@$project.iam.gserviceaccount.com}"
project_re='^[a-z][a-z0-9-]{4,28}[a-z0-9]$'
region_re='^[a-z]+-[a-z]+[0-9]+$'
matches --project "$project" "$project_re" "6-30 lowercase letters, digits and hyphens"
matches --registry-project "$registry_project" '^[a-z][a-z0-9.:-]{2,99}$' "a project ID (lowercase letters, digits, hyphens)"
matches --region "$region" "$region_re" "a Cloud Run region such as us-central1"
matches --registry-region "$registry_region" "$region_re" "a ClearBlade region such as us-central1"
matches --registry-id "$registry_id" '^[A-Za-z][A-Za-z0-9._+~%-]{2,254}$' "3-255 characters, starting with a letter"
matches --service "$service" '^[a-z]([-a-z0-9]{0,47}[a-z0-9])?$' "lowercase letters, digits and hyphens, at most 49"
matches --service-account "$service_account" '^[a-z][a-z0-9-]{4,28}[a-z0-9]@[a-z0-9.-]+\.iam\.gserviceaccount\.com$' "a service account e-mail"
matches --repository "$repository" '^[a-z]([a-z0-9-]{0,61}[a-z0-9])?$' "lowercase letters, digits and hyphens"
matches --builder "$builder" '^(cloud|docker)$' "cloud or docker"
matches --balena-api-url "$balena_api_url" '^https://[A-Za-z0-9.-]+(:[0-9]+)?(/[A-Za-z0-9._~/-]*)?$' "an https:// URL"
matches --key-type "$key_type" '^(ec-p256|rsa-2048)$' "ec-p256 or rsa-2048"
matches --rust-log "$rust_log" '^[A-Za-z0-9_:=.,/-]+$' "a RUST_LOG filter such as info or info,provision_core=debug"
matches --cpu "$cpu" '^([1248]|0\.[0-9]+)$' "1, 2, 4, 8 or a fraction such as 0.5"
matches --memory "$memory" '^[0-9]+(Mi|Gi)$' "a size such as 256Mi or 1Gi"
int_in --request-budget-ms "$request_budget_ms" 100 900000
int_in --timeout "$timeout" 1 3600
int_in --concurrency "$concurrency" 1 1000
int_in --min-instances "$min_instances" 0 1000
int_in --max-instances "$max_instances" 1 1000
(( 10#$min_instances <= 10#$max_instances )) || die "--min-instances $min_instances is above --max-instances $max_instances"
(( 10#$timeout * 1000 > 10#$request_budget_ms )) || die "--timeout ${timeout}s must be above the request budget (${request_budget_ms} ms), so the function always answers first"
[[ $build_only == false || $skip_build == false ]] || die "--build-only and --skip-build/--image exclude each other"

if [[ -z "$tag" ]]; then
  if sha="$(git -C "$repo_root" rev-parse --short=12 HEAD 2>/dev/null)"; then
    tag="$sha"
    [[ -z "$(git -C "$repo_root" status --porcelain --untracked-files=no 2>/dev/null)" ]] || tag="$sha-dirty-$(date -u +%Y%m%d%H%M%S)"
  else
    tag="build-$(date -u +%Y%m%d%H%M%S)"
  fi
fi
matches --tag "$tag" '^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$' "letters, digits, _ . -, at most 128"
image="${image:-$region-docker.pkg.dev/$project/$repository/provision-cloudrun:$tag}"
matches --image "$image" '^[a-z0-9.-]+(:[0-9]+)?/[A-Za-z0-9._/-]+(:[A-Za-z0-9_.-]+|@sha256:[0-9a-f]{64})$' "a full image reference with a tag or digest"

# The plain settings service.yaml's env placeholders take (PORT is Cloud Run's to set). The
# secrets are service.yaml's own (valueFrom.secretKeyRef, the ids infra/gcp creates).
env_names=(PROVISION_CLOUD BALENA_API_URL PROVISION_ALLOW_UNAUTHENTICATED PROVISION_REQUEST_BUDGET_MS PROVISION_KEY_TYPE RUST_LOG GCP_PROJECT_ID GCP_REGION CB_REGISTRY_ID)
env_values=(gcp "$balena_api_url" "$anonymous_callers" "$request_budget_ms" "$key_type" "$rust_log" "$registry_project" "$registry_region" "$registry_id")

# service.yaml with its ${PLACEHOLDERS} filled in; any placeholder left over is an error.
render_yaml() {
  local text name value
  text="$(cat "$repo_root/deploy/gcp/service.yaml")"
  if [[ $operator_token == false ]]; then
    text="$(sed '/# begin operator-token/,/# end operator-token/d' <<<"$text")"
  fi
  for name in SERVICE REGION PROJECT_ID IMAGE SERVICE_ACCOUNT TIMEOUT CONCURRENCY MIN_INSTANCES MAX_INSTANCES CPU MEMORY; do
    case "$name" in
      SERVICE) value="$service" ;; REGION) value="$region" ;; PROJECT_ID) value="$project" ;;
      IMAGE) value="$image" ;; SERVICE_ACCOUNT) value="$service_account" ;; TIMEOUT) value="$timeout" ;;
      CONCURRENCY) value="$concurrency" ;; MIN_INSTANCES) value="$min_instances" ;;
      MAX_INSTANCES) value="$max_instances" ;; CPU) value="$cpu" ;; MEMORY) value="$memory" ;;
    esac
    text="${text//"\${$name}"/$value}"
  done
  for i in "${!env_names[@]}"; do
    text="${text//"\${${env_names[$i]}}"/${env_values[$i]}}"
  done
  if grep -v '^[[:space:]]*#' <<<"$text" | grep -q '\${'; then
    echo "deploy: service.yaml has placeholders this script does not fill: $(grep -v '^[[:space:]]*#' <<<"$text" | grep -o '\${[A-Za-z_]*}' | sort -u | tr '\n' ' ')" >&2
    return 1
  fi
  printf '%s\n' "$text"
}

if [[ $print_yaml == true ]]; then
  render_yaml
  exit 0
fi
rendered="$(mktemp --suffix=.yaml)"
trap 'rm -f "$rendered"' EXIT
render_yaml >"$rendered"
# The Secret Manager secrets the service reads: the secretKeyRef names of the rendered YAML.
mapfile -t secret_ids < <(awk '/secretKeyRef:/ { ref = 1; next } ref && $1 == "name:" { print $2; ref = 0 }' "$rendered")
[[ ${#secret_ids[@]} -gt 0 ]] || die "deploy/gcp/service.yaml reads no Secret Manager secret (secretKeyRef): is it intact?"

# run CMD...: print the command, then run it (only print it with --dry-run).
run() {
  printf '+'; printf ' %q' "$@"; printf '\n'
  [[ $dry_run == true ]] || "$@"
}

echo "deploy:   project $project, region $region, service $service, runs as $service_account"
echo "deploy:   registry $registry_id ($registry_project, $registry_region), image $image"
echo "deploy:   secrets: ${secret_ids[*]}"
if [[ $dry_run == true ]]; then
  echo "deploy:   --dry-run: printing the commands only"
else
  command -v gcloud >/dev/null || die "gcloud not found: install the Google Cloud CLI (https://cloud.google.com/sdk/docs/install)"
  command -v curl >/dev/null || die "curl not found (step 4 calls GET /healthz with it)"
  account="$(gcloud auth list --filter=status:ACTIVE --format='value(account)' 2>/dev/null | head -n 1)"
  [[ -n "$account" ]] || die "gcloud has no active account: gcloud auth login"
  echo "deploy:   gcloud account $account"
  if [[ $build_only == false ]]; then
    for id in "${secret_ids[@]}"; do
      gcloud secrets versions describe latest --secret="$id" --project="$project" --format='value(state)' >/dev/null 2>&1 \
        || die "secret $id has no version (or is not readable) in $project: add one first (deploy/gcp/README.md, step 3)"
    done
    echo "deploy:   every secret has a version"
  fi
  if [[ $builder == docker && $skip_build == false ]]; then
    command -v docker >/dev/null || die "docker not found (or use --builder cloud)"
  fi
fi

# ---- 2. build and push -------------------------------------------------------------------
if [[ $skip_build == true ]]; then
  echo "deploy: 2/4 no build: deploying $image as it is"
elif [[ $builder == cloud ]]; then
  echo "deploy: 2/4 building $image with Cloud Build (deploy/gcp/cloudbuild.yaml)"
  run gcloud builds submit "$repo_root" --project="$project" \
    --config="deploy/gcp/cloudbuild.yaml" --ignore-file="deploy/gcp/.gcloudignore" \
    --substitutions="_IMAGE=$image"
else
  echo "deploy: 2/4 building $image with docker, then pushing it"
  run gcloud auth configure-docker "$region-docker.pkg.dev" --quiet
  run docker build --file deploy/gcp/Dockerfile --tag "$image" "$repo_root"
  run docker push "$image"
fi
if [[ $build_only == true ]]; then
  echo "deploy: built and pushed $image (--build-only: not deployed)"
  exit 0
fi

# ---- 3. deploy ---------------------------------------------------------------------------
echo "deploy: 3/4 gcloud run services replace (deploy/gcp/service.yaml, rendered)"
run gcloud run services replace "$rendered" --project="$project" --region="$region" --platform=managed --quiet
# Public invoker by default: devices have no Google identity (see the top).
if [[ $public_invoker == true ]]; then
  run gcloud run services add-iam-policy-binding "$service" --project="$project" --region="$region" \
    --member=allUsers --role=roles/run.invoker --quiet
else
  run gcloud run services remove-iam-policy-binding "$service" --project="$project" --region="$region" \
    --member=allUsers --role=roles/run.invoker --quiet || true
fi

# ---- 4. check ----------------------------------------------------------------------------
echo "deploy: 4/4 checking GET /healthz"
if [[ $dry_run == true ]]; then
  run gcloud run services describe "$service" --project="$project" --region="$region" --format='value(status.url)'
  echo "deploy: --dry-run: nothing was run"
  exit 0
fi
url="$(gcloud run services describe "$service" --project="$project" --region="$region" --format='value(status.url)')"
[[ -n "$url" ]] || die "the service has no URL yet: gcloud run services describe $service --region $region"
if [[ $public_invoker == true ]]; then
  status="$(curl -sS -o /dev/null -w '%{http_code}' --max-time 30 "$url/healthz" || true)"
else
  status="$(curl -sS -o /dev/null -w '%{http_code}' --max-time 30 -H "Authorization: Bearer $(gcloud auth print-identity-token)" "$url/healthz" || true)"
fi
if [[ "$status" != 200 ]]; then
  echo "deploy: FAIL GET $url/healthz answered ${status:-nothing}; see: gcloud run services logs read $service --region $region --project $project" >&2
  exit 1
fi
echo "deploy: ok   $url/healthz answered 200"
echo "deploy: done: $service serves $image at $url (POST/GET/DELETE on / and /provision)"
