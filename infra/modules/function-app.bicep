// The Flex Consumption function app that runs the backup jobs. It holds no keys: runtime storage,
// the deployment package, Application Insights and Key Vault references all use the user-assigned
// identity. The one exception is the drill share's mount (drill-share.bicep), which SMB authenticates
// with that scratch account's key.
import { stringMap, tagSet } from 'types.bicep'

param name string
param planName string
param location string
param tags tagSet
@description('Tag value azd uses to find the app for `azd deploy` (the service name in azure.yaml).')
param serviceName string
param identityId string
param identityClientId string
param runtimeStorageName string
param runtimeBlobEndpoint string
param deploymentContainerName string
param applicationInsightsConnectionString string
@description('Subnet (delegated to Microsoft.App/environments) for outbound traffic into the VNet where the agent listens; empty for none.')
param subnetId string
@allowed([512, 2048, 4096])
param instanceMemoryMB int
@minValue(1)
@maxValue(1000)
param maximumInstanceCount int
@description('The app\'s own settings (TCAB_BACKUP_*); the platform settings below are applied after them, so no extra setting can replace the identity-based connections.')
param appSettings stringMap
@description('Storage account of the restore drill\'s Azure Files share; empty for no mount.')
param drillShareAccountName string = ''
param drillShareName string = ''
@description('Where the drill share is mounted in the app (TCAB_BACKUP_DRILL_WORK_DIR points there).')
param drillMountPath string = ''

// Flex Consumption rejects FUNCTIONS_WORKER_RUNTIME and FUNCTIONS_EXTENSION_VERSION (the runtime is
// set in functionAppConfig), so only the identity-based connections are platform settings.
var platformSettings = {
  AzureWebJobsStorage__accountName: runtimeStorageName
  AzureWebJobsStorage__credential: 'managedidentity'
  AzureWebJobsStorage__clientId: identityClientId
  APPLICATIONINSIGHTS_CONNECTION_STRING: applicationInsightsConnectionString
  APPLICATIONINSIGHTS_AUTHENTICATION_STRING: 'ClientId=${identityClientId};Authorization=AAD'
  // DefaultAzureCredential in the jobs picks the user-assigned identity by this id.
  AZURE_CLIENT_ID: identityClientId
  // V8's young generation kept small: the jobs' peak memory (src/node-flags.ts says why and what it measured).
  NODE_OPTIONS: '--max-semi-space-size=4'
}

resource plan 'Microsoft.Web/serverfarms@2025-03-01' = {
  name: planName
  location: location
  tags: tags
  kind: 'functionapp'
  sku: { name: 'FC1', tier: 'FlexConsumption' }
  properties: { reserved: true }
}

resource app 'Microsoft.Web/sites@2025-03-01' = {
  name: name
  location: location
  tags: union(tags, { 'azd-service-name': serviceName })
  kind: 'functionapp,linux'
  identity: {
    type: 'UserAssigned'
    userAssignedIdentities: { '${identityId}': {} }
  }
  properties: {
    serverFarmId: plan.id
    httpsOnly: true
    keyVaultReferenceIdentity: identityId
    virtualNetworkSubnetId: empty(subnetId) ? null : subnetId
    siteConfig: {
      minTlsVersion: '1.2'
      ftpsState: 'Disabled'
      http20Enabled: true
      appSettings: [for setting in items(union(appSettings, platformSettings)): { name: setting.key, value: setting.value }]
    }
    functionAppConfig: {
      deployment: {
        storage: {
          type: 'blobContainer'
          value: '${runtimeBlobEndpoint}${deploymentContainerName}'
          authentication: { type: 'UserAssignedIdentity', userAssignedIdentityResourceId: identityId }
        }
      }
      scaleAndConcurrency: { instanceMemoryMB: instanceMemoryMB, maximumInstanceCount: maximumInstanceCount }
      runtime: { name: 'node', version: '24' }
    }
  }
}

resource drillAccount 'Microsoft.Storage/storageAccounts@2025-01-01' existing = if (!empty(drillShareAccountName)) {
  name: drillShareAccountName
}

// The restore drill's scratch folder: room for the whole database, which a Flex instance's temporary disk
// (0.8 GB) does not have.
resource mounts 'Microsoft.Web/sites/config@2025-03-01' = if (!empty(drillShareAccountName)) {
  parent: app
  name: 'azurestorageaccounts'
  properties: {
    drill: {
      type: 'AzureFiles'
      protocol: 'Smb'
      accountName: drillShareAccountName
      shareName: drillShareName
      mountPath: drillMountPath
      accessKey: drillAccount!.listKeys().keys[0].value
    }
  }
}

// Deployment goes through the identity-authenticated package container, so basic (user/password)
// publishing is switched off.
resource ftpCredentials 'Microsoft.Web/sites/basicPublishingCredentialsPolicies@2025-03-01' = {
  parent: app
  name: 'ftp'
  properties: { allow: false }
}

resource scmCredentials 'Microsoft.Web/sites/basicPublishingCredentialsPolicies@2025-03-01' = {
  parent: app
  name: 'scm'
  properties: { allow: false }
}

output name string = app.name
output defaultHostName string = app.properties.defaultHostName
