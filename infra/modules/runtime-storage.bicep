// The function app's own storage: host state (timer leases, host keys) and the deployment package.
// Kept apart from the backup account so that the app's broad rights here (Blob Data Owner) never reach
// the backups, and so that a cleanup of runtime state can never touch a snapshot.
import { tagSet } from 'types.bicep'

param name string
param location string
param tags tagSet
param deploymentContainerName string
param principalId string

var storageBlobDataOwner = 'b7e6dc6d-f1e8-4753-8033-0f276bb0955b'

resource account 'Microsoft.Storage/storageAccounts@2025-01-01' = {
  name: name
  location: location
  tags: tags
  kind: 'StorageV2'
  sku: { name: 'Standard_LRS' }
  properties: {
    allowSharedKeyAccess: false
    allowBlobPublicAccess: false
    allowCrossTenantReplication: false
    defaultToOAuthAuthentication: true
    minimumTlsVersion: 'TLS1_2'
    supportsHttpsTrafficOnly: true
    publicNetworkAccess: 'Enabled'
    networkAcls: { defaultAction: 'Allow', bypass: 'AzureServices' }
  }
}

resource blobService 'Microsoft.Storage/storageAccounts/blobServices@2025-01-01' = {
  parent: account
  name: 'default'
}

resource deploymentContainer 'Microsoft.Storage/storageAccounts/blobServices/containers@2025-01-01' = {
  parent: blobService
  name: deploymentContainerName
  properties: { publicAccess: 'None' }
}

// The host writes leases and keys and the platform reads the package: Blob Data Owner, and nothing for
// queues or tables, which timers and HTTP triggers do not use.
resource blobOwner 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(account.id, principalId, storageBlobDataOwner)
  scope: account
  properties: {
    principalId: principalId
    principalType: 'ServicePrincipal'
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', storageBlobDataOwner)
  }
}

output name string = account.name
// Built from the name rather than read back, so the app's settings are known before the account exists.
output blobEndpoint string = 'https://${account.name}.blob.${environment().suffixes.storage}/'
output deploymentContainerName string = deploymentContainer.name
