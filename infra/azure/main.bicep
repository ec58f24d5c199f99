// balena -> Azure IoT Hub provisioning: one-time setup of everything the provision-azure
// function (an Azure Functions custom handler, deploy/azure/) runs on.
//
// Creates, in one resource group:
//   - an IoT Hub (S1, 1 unit) whose only non-admin shared access policy is `balena-provision`
//     (RegistryRead, RegistryWrite): the function can create, read and delete device
//     identities, and nothing else (no ServiceConnect, no DeviceConnect);
//   - a Key Vault (RBAC authorization, soft delete, purge protection) holding that policy's
//     connection string, the balena API key and, optionally, an operator token;
//   - a Linux Consumption plan and a Linux function app (FUNCTIONS_WORKER_RUNTIME=custom) with a
//     system-assigned identity that may only read the vault's secrets (Key Vault Secrets User),
//     its storage account, and Application Insights on a Log Analytics workspace.
//
// Deploy (see deploy/azure/README.md):
//   az group create --name balena-provision --location westeurope
//   read -rsp 'balena API key: ' BALENA_KEY; echo
//   az deployment group create --resource-group balena-provision \
//     --template-file infra/azure/main.bicep \
//     --parameters balenaApiKey="$BALENA_KEY"
//   unset BALENA_KEY
// then build and publish the function code: scripts/package-azure and
//   cd dist/azure && func azure functionapp publish <functionAppName output> --custom
//
// Why Linux Consumption (Y1) and not Flex Consumption (FC1): both run custom handlers on
// Linux, but Flex Consumption does not take the FUNCTIONS_WORKER_RUNTIME and
// FUNCTIONS_EXTENSION_VERSION app settings (it declares the runtime in
// functionAppConfig.runtime) and deploys from a blob container the template must create and
// grant. Y1 takes the classic settings below and a plain `func azure functionapp publish
// --custom`. Microsoft has announced Linux Consumption's retirement for 2028-09-30; moving to
// FC1 later changes only this file.
//
// checkov (scripts/lint-azure) parses this file and runs its Azure checks on it; every check
// that does not fit this design is skipped inside the resource it concerns, with the reason.

targetScope = 'resourceGroup'

@description('Location of every resource except the IoT Hub. Default: the resource group\'s.')
param location string = resourceGroup().location

@description('Location of the IoT Hub. Default: same as everything else.')
param iotHubLocation string = location

@description('IoT Hub name: globally unique, becomes <name>.azure-devices.net.')
@minLength(3)
@maxLength(50)
param iotHubName string = 'balena-provision-${uniqueString(resourceGroup().id)}'

@description('Function app name: globally unique, becomes <name>.azurewebsites.net.')
@minLength(2)
@maxLength(60)
param functionAppName string = 'balena-provision-${uniqueString(resourceGroup().id)}'

@description('Key Vault name: globally unique, 3-24 letters, digits and hyphens. A deleted vault keeps its name for 90 days (purge protection).')
@minLength(3)
@maxLength(24)
param keyVaultName string = 'bp-kv-${uniqueString(resourceGroup().id)}'

@description('Storage account of the function app: globally unique, 3-24 lowercase letters and digits.')
@minLength(3)
@maxLength(24)
param storageAccountName string = 'bpfunc${uniqueString(resourceGroup().id)}'

@description('The function\'s own balenaCloud API key (BALENA_API_KEY). Stored in the Key Vault only.')
@secure()
@minLength(1)
param balenaApiKey string

@description('Optional operator token (PROVISION_OPERATOR_TOKEN), at least 16 visible ASCII characters, e.g. `openssl rand -hex 32`. Empty: no operator token.')
@secure()
param operatorToken string = ''

@description('Base URL of the balena API (openBalena deployments use their own).')
param balenaApiUrl string = 'https://api.balena-cloud.com'

@description('RUST_LOG of the function.')
param rustLog string = 'info'

// Limits at the edge: a flood of requests must not use up the balenaCloud key's rate limit or
// the IoT Hub's registry quota. The Consumption plan has no request throttling of its own; the
// cap is on instances (deploy/azure/README.md).
@description('Most instances the function app scales out to (siteConfig.functionAppScaleLimit). Default 10: bounds the parallel calls a flood of requests makes with the one balenaCloud key and on the IoT Hub registry, while serving a fleet rollout; raise it only as far as those allow.')
@minValue(1)
param functionAppScaleLimit int = 10

@description('Days the function\'s logs are kept in the Log Analytics workspace.')
@minValue(30)
@maxValue(730)
param logRetentionDays int = 30

var policyName = 'balena-provision'
var iotHubApiVersion = '2023-06-30'
// Key Vault Secrets User: read secret values, nothing else.
var keyVaultSecretsUserRoleId = '4633458b-17de-408a-b874-0445c86b69e6'
var hasOperatorToken = !empty(operatorToken)

resource iotHub 'Microsoft.Devices/IotHubs@2023-06-30' = {
  name: iotHubName
  location: iotHubLocation
  sku: {
    name: 'S1'
    capacity: 1
  }
  properties: {
    // The list replaces Azure's default policies: the hub has exactly these two.
    //   iothubowner       Azure's default admin policy, kept for the portal and `az iot`;
    //                     the function never sees it.
    //   balena-provision  the function's: device registry read/write only.
    authorizationPolicies: [
      {
        keyName: 'iothubowner'
        rights: 'RegistryWrite, ServiceConnect, DeviceConnect'
      }
      {
        keyName: policyName
        rights: 'RegistryRead, RegistryWrite'
      }
    ]
    // Public network access stays on: devices in the field connect to the hub over the internet.
  }
}

resource keyVault 'Microsoft.KeyVault/vaults@2023-07-01' = {
  name: keyVaultName
  location: location
  properties: {
    tenantId: subscription().tenantId
    sku: {
      family: 'A'
      name: 'standard'
    }
    enableRbacAuthorization: true
    enableSoftDelete: true
    softDeleteRetentionInDays: 90
    enablePurgeProtection: true
    enabledForDeployment: false
    enabledForDiskEncryption: false
    enabledForTemplateDeployment: false
    publicNetworkAccess: 'Enabled'
    networkAcls: {
      bypass: 'AzureServices'
      defaultAction: 'Allow'
    }
    // checkov:skip=CKV_AZURE_109:The Consumption plan has no virtual network integration, so the function reads its Key Vault references over the public endpoint; access is by Entra RBAC (one role, one identity).
    // checkov:skip=CKV_AZURE_189:Same reason: a vault closed to public networks is unreachable from a Consumption-plan app.
  }
}

// HostName=...;SharedAccessKeyName=balena-provision;SharedAccessKey=... : the service
// connection string of the balena-provision policy, never a device connection string.
resource iotHubConnectionString 'Microsoft.KeyVault/vaults/secrets@2023-07-01' = {
  parent: keyVault
  name: 'iothub-connection-string'
  properties: {
    contentType: 'IoT Hub service connection string (policy ${policyName})'
    value: 'HostName=${iotHub.properties.hostName};SharedAccessKeyName=${policyName};SharedAccessKey=${listKeys(resourceId('Microsoft.Devices/IotHubs/IotHubKeys', iotHub.name, policyName), iotHubApiVersion).primaryKey}'
    // checkov:skip=CKV_AZURE_41:The value is re-read from the IoT Hub on every deployment; an expiry date would stop the function without rotating anything.
  }
}

resource balenaApiKeySecret 'Microsoft.KeyVault/vaults/secrets@2023-07-01' = {
  parent: keyVault
  name: 'balena-api-key'
  properties: {
    contentType: 'balenaCloud API key'
    value: balenaApiKey
    // checkov:skip=CKV_AZURE_41:balenaCloud API keys are rotated in balenaCloud, then here (README); an expiry date would only stop the function.
  }
}

resource operatorTokenSecret 'Microsoft.KeyVault/vaults/secrets@2023-07-01' = if (hasOperatorToken) {
  parent: keyVault
  name: 'provision-operator-token'
  properties: {
    contentType: 'provisioning operator bearer token'
    value: operatorToken
    // checkov:skip=CKV_AZURE_41:Rotated by redeploying with a new operatorToken; an expiry date would only stop the function.
    // checkov:skip=CKV_AZURE_114:False positive: checkov does not look inside conditional (`if`) resources; contentType is set just above.
  }
}

resource storage 'Microsoft.Storage/storageAccounts@2023-05-01' = {
  name: storageAccountName
  location: location
  kind: 'StorageV2'
  sku: {
    name: 'Standard_LRS'
  }
  properties: {
    supportsHttpsTrafficOnly: true
    minimumTlsVersion: 'TLS1_2'
    allowBlobPublicAccess: false
    allowCrossTenantReplication: false
    defaultToOAuthAuthentication: true
    // Shared keys stay on: the Consumption plan's AzureWebJobsStorage is a key-based
    // connection string, and `func azure functionapp publish` uploads the package with it.
    allowSharedKeyAccess: true
    publicNetworkAccess: 'Enabled'
    networkAcls: {
      bypass: 'AzureServices'
      defaultAction: 'Allow'
    }
    // checkov:skip=CKV_AZURE_35:The Consumption plan reaches its storage over public endpoints only (no virtual network integration).
    // checkov:skip=CKV_AZURE_59:Same reason: the function app's own storage must accept public network access on this plan.
    // checkov:skip=CKV_AZURE_206:Holds only the function host's state and the deployed package (both recreated by a redeploy): locally redundant is enough.
    // checkov:skip=CKV_AZURE_43:The name is a parameter whose default is computed (bpfunc + uniqueString: 19 lowercase letters and digits), which checkov cannot evaluate; @minLength/@maxLength bound it and Azure rejects an invalid name.
  }
}

resource logs 'Microsoft.OperationalInsights/workspaces@2023-09-01' = {
  name: '${functionAppName}-logs'
  location: location
  properties: {
    sku: {
      name: 'PerGB2018'
    }
    retentionInDays: logRetentionDays
  }
}

resource appInsights 'Microsoft.Insights/components@2020-02-02' = {
  name: functionAppName
  location: location
  kind: 'web'
  properties: {
    Application_Type: 'web'
    WorkspaceResourceId: logs.id
  }
}

// Linux Consumption plan.
resource plan 'Microsoft.Web/serverfarms@2023-12-01' = {
  name: '${functionAppName}-plan'
  location: location
  kind: 'functionapp'
  sku: {
    name: 'Y1'
    tier: 'Dynamic'
  }
  properties: {
    reserved: true
    // checkov:skip=CKV_AZURE_225:The Consumption plan cannot be zone redundant.
  }
}

var keyVaultReference = '@Microsoft.KeyVault(SecretUri='
var baseAppSettings = [
  {
    name: 'FUNCTIONS_WORKER_RUNTIME'
    value: 'custom'
  }
  {
    name: 'FUNCTIONS_EXTENSION_VERSION'
    value: '~4'
  }
  {
    name: 'AzureWebJobsStorage'
    value: 'DefaultEndpointsProtocol=https;AccountName=${storage.name};EndpointSuffix=${environment().suffixes.storage};AccountKey=${storage.listKeys().keys[0].value}'
  }
  {
    name: 'APPLICATIONINSIGHTS_CONNECTION_STRING'
    value: appInsights.properties.ConnectionString
  }
  {
    name: 'CONNECTION_STRING'
    value: '${keyVaultReference}${iotHubConnectionString.properties.secretUri})'
  }
  {
    name: 'BALENA_API_KEY'
    value: '${keyVaultReference}${balenaApiKeySecret.properties.secretUri})'
  }
  {
    name: 'BALENA_API_URL'
    value: balenaApiUrl
  }
  {
    name: 'PROVISION_ALLOW_UNAUTHENTICATED'
    value: 'false'
  }
  {
    name: 'RUST_LOG'
    value: rustLog
  }
]
var operatorTokenAppSettings = hasOperatorToken ? [
  {
    name: 'PROVISION_OPERATOR_TOKEN'
    value: '${keyVaultReference}${operatorTokenSecret.properties.secretUri})'
  }
] : []

resource functionApp 'Microsoft.Web/sites@2023-12-01' = {
  name: functionAppName
  location: location
  kind: 'functionapp,linux'
  identity: {
    type: 'SystemAssigned'
  }
  properties: {
    serverFarmId: plan.id
    reserved: true
    httpsOnly: true
    clientAffinityEnabled: false
    keyVaultReferenceIdentity: 'SystemAssigned'
    siteConfig: {
      // Custom handlers on Linux: the platform's own stack definition ("custom") leaves
      // linuxFxVersion empty; FUNCTIONS_WORKER_RUNTIME=custom selects the handler.
      linuxFxVersion: ''
      minTlsVersion: '1.2'
      scmMinTlsVersion: '1.2'
      ftpsState: 'Disabled'
      http20Enabled: true
      remoteDebuggingEnabled: false
      use32BitWorkerProcess: false
      functionAppScaleLimit: functionAppScaleLimit
      // Note: this list replaces every app setting on each deployment, including the
      // WEBSITE_RUN_FROM_PACKAGE that `func azure functionapp publish` adds: publish again
      // after re-running this template.
      appSettings: concat(baseAppSettings, operatorTokenAppSettings)
    }
    // checkov:skip=CKV_AZURE_17:Callers prove themselves with bearer tokens (a device's balena API key or the operator token) that the function verifies; devices have no client certificate before they are provisioned.
    // checkov:skip=CKV_AZURE_222:The function is called by devices over the internet; it cannot be private.
    // checkov:skip=CKV_AZURE_212:The Consumption plan allocates instances per request; a minimum instance count does not exist on it.
    // checkov:skip=CKV_AZURE_213:App Service Health check is not available on the Consumption plan (it evicts instances from a fixed pool); GET /api/healthz is there for external uptime checks.
  }
}

// The function's identity may read the vault's secrets (its Key Vault references), nothing else.
resource secretsUser 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(keyVault.id, functionApp.id, keyVaultSecretsUserRoleId)
  scope: keyVault
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', keyVaultSecretsUserRoleId)
    principalId: functionApp.identity.principalId
    principalType: 'ServicePrincipal'
  }
}

output functionAppName string = functionApp.name
output functionAppHostName string = functionApp.properties.defaultHostName
output iotHubName string = iotHub.name
output iotHubHostName string = iotHub.properties.hostName
output keyVaultName string = keyVault.name
