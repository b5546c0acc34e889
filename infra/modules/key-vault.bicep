// Secrets the function app reads through Key Vault references. RBAC only (no access policies), so who
// can read a secret is visible with the rest of the role assignments. A secret is written here only
// when its parameter is given; otherwise an operator sets it (docs/deploy.md) and a later deployment
// leaves it alone.
import { tagSet } from 'types.bicep'

param name string
param location string
param tags tagSet
@description('Principal that reads the secrets (the function app identity).')
param readerPrincipalId string
@description('Principal allowed to set secrets (the deploying operator); empty for none.')
param officerPrincipalId string
@description('Purge protection cannot be turned off again; it keeps a deleted vault and its secrets recoverable for the retention period.')
param enablePurgeProtection bool
@description('Names the secrets are stored under; the app settings refer to the same names.')
param secretNames {
  agentKey: string
  r2AccessKeyId: string
  r2SecretAccessKey: string
  pgDrillPassword: string
}
@secure()
param agentKey string
@secure()
param r2AccessKeyId string
@secure()
param r2SecretAccessKey string
@secure()
param pgDrillPassword string

var keyVaultSecretsUser = '4633458b-17de-408a-b874-0445c86b69e6'
var keyVaultSecretsOfficer = 'b86a8fe4-44ce-4948-aee5-eccb2c155cd7'

resource vault 'Microsoft.KeyVault/vaults@2025-05-01' = {
  name: name
  location: location
  tags: tags
  properties: {
    tenantId: subscription().tenantId
    sku: { family: 'A', name: 'standard' }
    enableRbacAuthorization: true
    enableSoftDelete: true
    softDeleteRetentionInDays: 90
    enablePurgeProtection: enablePurgeProtection ? true : null
    enabledForDeployment: false
    enabledForDiskEncryption: false
    enabledForTemplateDeployment: false
    publicNetworkAccess: 'Enabled'
    networkAcls: { defaultAction: 'Allow', bypass: 'AzureServices' }
  }
}

resource agentKeySecret 'Microsoft.KeyVault/vaults/secrets@2025-05-01' = if (!empty(agentKey)) {
  parent: vault
  name: secretNames.agentKey
  properties: { value: agentKey, contentType: 'HMAC key of the snapshot agent (TCAB_BACKUP_AGENT_KEY)' }
}

resource r2AccessKeyIdSecret 'Microsoft.KeyVault/vaults/secrets@2025-05-01' = if (!empty(r2AccessKeyId)) {
  parent: vault
  name: secretNames.r2AccessKeyId
  properties: { value: r2AccessKeyId, contentType: 'R2 API token access key id' }
}

resource r2SecretAccessKeySecret 'Microsoft.KeyVault/vaults/secrets@2025-05-01' = if (!empty(r2SecretAccessKey)) {
  parent: vault
  name: secretNames.r2SecretAccessKey
  properties: { value: r2SecretAccessKey, contentType: 'R2 API token secret access key' }
}

resource pgDrillPasswordSecret 'Microsoft.KeyVault/vaults/secrets@2025-05-01' = if (!empty(pgDrillPassword)) {
  parent: vault
  name: secretNames.pgDrillPassword
  properties: { value: pgDrillPassword, contentType: 'Password of the Postgres drill role' }
}

resource reader 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(vault.id, readerPrincipalId, keyVaultSecretsUser)
  scope: vault
  properties: {
    principalId: readerPrincipalId
    principalType: 'ServicePrincipal'
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', keyVaultSecretsUser)
  }
}

resource officer 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (!empty(officerPrincipalId)) {
  name: guid(vault.id, officerPrincipalId, keyVaultSecretsOfficer)
  scope: vault
  properties: {
    principalId: officerPrincipalId
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', keyVaultSecretsOfficer)
  }
}

output name string = vault.name
// Built from the name rather than read back, so app settings are known before the vault exists.
output uri string = 'https://${vault.name}${environment().suffixes.keyvaultDns}/'
