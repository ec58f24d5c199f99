//! `cloud-relay --help`.

pub const TEXT: &str = "\
cloud-relay: relays every message from the device's local MQTT broker to its cloud (AWS IoT Core,
Azure IoT Hub, ClearBlade IoT Core), after provisioning the device with its own balenaCloud key.
A drop-in replacement for balena's Node cloud-relay block: the same variables and defaults.

Usage: cloud-relay            (settings from the environment; runs until SIGTERM)
       cloud-relay iotedge-provisioning [--listen URL] [--socket-mode MODE]
                                (Azure IoT Edge's external provisioning endpoint; see its --help)
       cloud-relay --help | --version

Settings (environment):
  CLOUD_PROVIDER           AWS, AZURE or GCP (ClearBlade); when unset: AWS_DATA_ENDPOINT set -> AWS,
                           AZURE_HUB_HOST set -> AZURE, GCP_PROJECT_ID set or a cloudfunctions.net
                           PROVISION_URL -> GCP
  PROVISION_URL            the provisioning function; asked while the credentials are missing
  BALENA_DEVICE_UUID       the device (RESIN_DEVICE_UUID accepted; balenaOS sets both)
  BALENA_SERVICE_NAME      credentials are stored as this service's variables (RESIN_SERVICE_NAME)
  BALENA_API_KEY           the device's own key, sent as the bearer token (label
                           io.balena.features.balena-api; RESIN_API_KEY accepted)
  BALENA_SUPERVISOR_ADDRESS, BALENA_SUPERVISOR_API_KEY
                           asked to fetch new variables once provisioned (label
                           io.balena.features.supervisor-api)
  PROVISION_KEEP_KEY       true: make and keep the private key here and send a CSR; no private key
                           passes through balenaCloud (default false)
  LOCAL_MQTT_URL           local broker (default mqtt://127.0.0.1:1883; mqtt://user:pass@host:port)
  PRODUCER_TOPIC           local topic subscribed at QoS 1 (default sensors)
  CLOUD_CONSUMER_TOPIC     cloud topic suffix (default sensors; GCP: events)
  AWS_DATA_ENDPOINT        AWS IoT data endpoint host[:port] (port 8883)
  AWS_TOPIC_ROOT           AWS topic is <root>/<thing>/<CLOUD_CONSUMER_TOPIC> (default balena; set
                           empty for the bare CLOUD_CONSUMER_TOPIC)
  AWS_CERT, AWS_PRIVATE_KEY          written by the function (base64 of PEM)
  AWS_ROOT_CA_PATH         file with the AWS server's CA (default: the public roots built in)
  AZURE_HUB_HOST           <hub>.azure-devices.net[:port]
  AZURE_CERT, AZURE_PRIVATE_KEY      written by the function (base64 of PEM)
  MESSAGING_HOST           ClearBlade MQTT host[:port] (default us-central1-mqtt.clearblade.com)
  GCP_PRIVATE_KEY, GCP_CLIENT_PATH, GCP_DATA_TOPIC_ROOT, GCP_PROJECT_ID
                           written by the function
  GCP_TOKEN_LIFETIME       JWT lifetime in minutes, fractions allowed (default 1440, the maximum)
  GCP_RENEWAL_START        reconnect this many minutes before the JWT expires (default 15)
  CLOUD_CA_CERT            PEM (or base64 of PEM) trusted for the cloud connection instead of the
                           public roots (private endpoints, tests)
  RELAY_QUEUE_DIR          the durable queue and the kept key (default /data/cloud-relay)
  RELAY_QUEUE_MAX_BYTES    queue bound; when full the oldest messages are dropped, counted and
                           logged (default 67108864)
  RUST_LOG                 log level (default info)

Delivery: a local message is acknowledged to the broker only once it is on disk (group commit),
and leaves the queue only when the cloud acknowledged it (QoS 1): duplicates are possible after a
crash, losses are not. No secret is ever written to the log.
";

/// `cloud-relay iotedge-provisioning --help`.
pub const IOTEDGE: &str = "\
cloud-relay iotedge-provisioning: Azure IoT Edge's external provisioning endpoint, fed by the
variables the provisioning function stores, so iotedged needs no secret in its configuration.

Usage: cloud-relay iotedge-provisioning [--listen URL] [--socket-mode MODE]
  --listen URL         unix:///path (default unix:///var/run/external/external.sock) or
                       http://<ip>:<port> (IoT Edge calls this endpoint over HTTP only)
  --socket-mode MODE   the Unix socket's mode, octal (default 660): only iotedged should reach it

API (iotedged's config.yaml: provisioning: source: \"external\", endpoint: the same URL):
  GET  /device/provisioninginformation   hubName (AZURE_HUB_HOST), deviceId (the device UUID),
       credentials x509: source payload (AZURE_CERT, AZURE_PRIVATE_KEY, PEM in base64) or, with
       PROVISION_KEEP_KEY=true, source hsm (paths of the kept key and of the certificate written
       beside it, mode 0600); status assigned, substatus initialAssignment, deviceDataReset
       once the identity changed. Not provisioned yet: 503 with Retry-After while it asks the
       function with the device's key.
  POST /device/reprovision               200 at once; asks the function whether the device is
       still provisioned, and for provisioning again when not; new variables restart the service.
  Anything else: JSON 404 or 405.

Settings: those of cloud-relay (cloud-relay --help): BALENA_DEVICE_UUID, BALENA_SERVICE_NAME,
BALENA_API_KEY, the supervisor's, PROVISION_URL, PROVISION_KEEP_KEY, AZURE_HUB_HOST,
RELAY_QUEUE_DIR (the kept key, the certificate file and the last assignment served).
";
