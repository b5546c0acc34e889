// Scratch space for the restore drill: an Azure Files share the function app mounts (function-app.bicep),
// so a drill can write the whole database and open it with SQLite (integrity_check, row counts) although a
// Flex Consumption instance has 0.8 GB of temporary disk and no persisted disk. An SMB mount authenticates
// with the account key, so this is the template's one account that allows shared keys: it is kept apart
// and holds nothing but the drill's scratch copy, which the drill deletes; never a backup, never the app's
// state. Without it (drillShare=false) a drill that does not fit verifies by streaming instead.
import { tagSet } from 'types.bicep'

param name string
param location string
param tags tagSet
param shareName string
@minValue(1)
@maxValue(5120)
param quotaGiB int

resource account 'Microsoft.Storage/storageAccounts@2025-01-01' = {
  name: name
  location: location
  tags: tags
  kind: 'StorageV2'
  sku: { name: 'Standard_LRS' }
  properties: {
    allowSharedKeyAccess: true
    allowBlobPublicAccess: false
    allowCrossTenantReplication: false
    minimumTlsVersion: 'TLS1_2'
    supportsHttpsTrafficOnly: true
    publicNetworkAccess: 'Enabled'
    networkAcls: { defaultAction: 'Allow', bypass: 'AzureServices' }
  }
}

resource fileService 'Microsoft.Storage/storageAccounts/fileServices@2025-01-01' = {
  parent: account
  name: 'default'
  // Scratch files: a deleted share or file need not be kept.
  properties: { shareDeleteRetentionPolicy: { enabled: false } }
}

resource share 'Microsoft.Storage/storageAccounts/fileServices/shares@2025-01-01' = {
  parent: fileService
  name: shareName
  properties: { shareQuota: quotaGiB, enabledProtocols: 'SMB' }
}

output name string = account.name
output shareName string = share.name
