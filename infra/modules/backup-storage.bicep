// The backup target in Azure: a storage account of its own, reachable only with Entra ID (no shared
// keys, no SAS signed with account keys, no anonymous reads). Versioning and soft delete undo a bad
// prune; optional version-level WORM keeps even an administrator from deleting a snapshot early; the
// lifecycle rule is a backstop for what retention should already have removed.
import { tagSet } from 'types.bicep'

param name string
param location string
param tags tagSet
param containerName string
@allowed(['Standard_LRS', 'Standard_ZRS', 'Standard_GRS', 'Standard_RAGRS', 'Standard_GZRS', 'Standard_RAGZRS'])
param skuName string
@description('Principal that writes and prunes snapshots (the function app identity).')
param writerPrincipalId string
@description('Principal allowed to read snapshots for restores (an operator); empty for none.')
param readerPrincipalId string
@minValue(1)
@maxValue(365)
param softDeleteDays int
@description('Version-level WORM period in days; 0 leaves immutability off.')
@minValue(0)
param immutabilityDays int
@description('Tier snapshots to Cool after this many days; 0 never.')
@minValue(0)
param coolAfterDays int
@description('Delete snapshots after this many days whatever retention says; 0 never. Checked against the retention horizon in main.bicep.')
@minValue(0)
param deleteAfterDays int
@description('Delete previous versions (left by overwrites and deletes) after this many days.')
@minValue(1)
param previousVersionDeleteAfterDays int

var storageBlobDataContributor = 'ba92f5b4-2d11-453d-a403-e96b0029c9fe'
var storageBlobDataReader = '2a2b9908-6ea1-4ae2-8e65-a410df84e7d1'

resource account 'Microsoft.Storage/storageAccounts@2025-01-01' = {
  name: name
  location: location
  tags: tags
  kind: 'StorageV2'
  sku: { name: skuName }
  properties: {
    accessTier: 'Hot'
    allowSharedKeyAccess: false
    allowBlobPublicAccess: false
    allowCrossTenantReplication: false
    defaultToOAuthAuthentication: true
    minimumTlsVersion: 'TLS1_2'
    supportsHttpsTrafficOnly: true
    publicNetworkAccess: 'Enabled'
    networkAcls: { defaultAction: 'Allow', bypass: 'AzureServices' }
    // Unlocked: the period can still be shortened or removed until an operator locks it on purpose
    // (a locked policy cannot be undone, so the template never locks it).
    immutableStorageWithVersioning: immutabilityDays > 0
      ? {
          enabled: true
          immutabilityPolicy: {
            immutabilityPeriodSinceCreationInDays: max(immutabilityDays, 1)
            state: 'Unlocked'
            allowProtectedAppendWrites: false
          }
        }
      : null
  }
}

resource blobService 'Microsoft.Storage/storageAccounts/blobServices@2025-01-01' = {
  parent: account
  name: 'default'
  properties: {
    isVersioningEnabled: true
    deleteRetentionPolicy: { enabled: true, days: softDeleteDays, allowPermanentDelete: false }
    containerDeleteRetentionPolicy: { enabled: true, days: softDeleteDays }
  }
}

resource container 'Microsoft.Storage/storageAccounts/blobServices/containers@2025-01-01' = {
  parent: blobService
  name: containerName
  properties: { publicAccess: 'None' }
}

var snapshotActions = union(
  coolAfterDays > 0 ? { tierToCool: { daysAfterModificationGreaterThan: coolAfterDays } } : {},
  deleteAfterDays > 0 ? { delete: { daysAfterModificationGreaterThan: deleteAfterDays } } : {}
)

var snapshotRule = {
  enabled: true
  name: 'snapshots-backstop'
  type: 'Lifecycle'
  definition: {
    filters: { blobTypes: ['blockBlob'], prefixMatch: ['${containerName}/snapshots/'] }
    actions: { baseBlob: snapshotActions }
  }
}

// Status documents are rewritten on every run, and each rewrite leaves a version behind.
var versionRule = {
  enabled: true
  name: 'previous-versions'
  type: 'Lifecycle'
  definition: {
    filters: { blobTypes: ['blockBlob'], prefixMatch: ['${containerName}/'] }
    actions: { version: { delete: { daysAfterCreationGreaterThan: previousVersionDeleteAfterDays } } }
  }
}

resource lifecycle 'Microsoft.Storage/storageAccounts/managementPolicies@2025-01-01' = {
  parent: account
  name: 'default'
  properties: {
    policy: {
      rules: concat(empty(snapshotActions) ? [] : [snapshotRule], [versionRule])
    }
  }
  dependsOn: [container]
}

// Scoped to this account only: the identity can write and delete snapshots here and nowhere else.
resource writer 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(account.id, writerPrincipalId, storageBlobDataContributor)
  scope: account
  properties: {
    principalId: writerPrincipalId
    principalType: 'ServicePrincipal'
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', storageBlobDataContributor)
  }
}

resource reader 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (!empty(readerPrincipalId)) {
  name: guid(account.id, readerPrincipalId, storageBlobDataReader)
  scope: account
  properties: {
    principalId: readerPrincipalId
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', storageBlobDataReader)
  }
}

output name string = account.name
output containerName string = container.name
