// tcab-backup on Azure: `azd up` provisions everything the backup functions need in one resource group,
// plus (when asked) the least-privilege role and delete lock for Postgres drills and the NSG rule that
// lets only the function app reach the snapshot agent. docs/deploy.md explains every parameter.
targetScope = 'subscription'

import { absenceCheck, keyVaultReference, resourceIdParts, retentionHorizonDays, retentionPolicy, retentionSetting, stringMap } from 'modules/types.bicep'

// ---- Environment ----------------------------------------------------------------------------------

@minLength(1)
@maxLength(64)
@description('azd environment name; names the resource group and seeds the unique resource names.')
param environmentName string

@minLength(1)
@description('Region of every resource; it must offer Flex Consumption function apps.')
@metadata({ azd: { type: 'location' } })
param location string

@description('Resource group name; default rg-<environmentName>.')
param resourceGroupName string = ''

@description('Object id of the operator running azd (AZURE_PRINCIPAL_ID): may set Key Vault secrets and read snapshots for restores. Empty for none.')
param principalId string = ''

// ---- Snapshot agent -------------------------------------------------------------------------------

@description('URL of the snapshot agent on the VM, e.g. https://10.0.1.4:8787 (HTTPS: the agent is reached over the network).')
param agentUrl string

@description('Key id the functions sign agent requests with; one of the ids in the agent\'s TCAB_AGENT_KEYS.')
param agentKeyId string = 'functions-1'

@secure()
@description('HMAC secret for agentKeyId (64 hex characters). Written to Key Vault when given; otherwise set the secret "agent-key" yourself.')
param agentKey string = ''

@description('PEM of the CA that signed the agent\'s certificate, when it is not publicly trusted; empty for none.')
param agentCaPem string = ''

@description('Subnet delegated to Microsoft.App/environments through which the function app reaches the agent\'s VNet; empty for none.')
param functionSubnetId string = ''

@description('ARM id of the network security group in front of the agent VM; when set, only functionSubnetId may reach agentPort.')
param agentNetworkSecurityGroupId string = ''

@minValue(1)
@maxValue(65535)
param agentPort int = 8787

@minValue(100)
@maxValue(4095)
@description('Priority of the NSG allow rule; the deny rule for the same port takes the next number.')
param agentNsgRulePriority int = 300

// ---- Targets and retention ------------------------------------------------------------------------

@description('Database name in storage keys; must match the agent\'s TCAB_AGENT_DATABASE_NAME.')
param databaseName string = 'tcab'

@minLength(3)
@maxLength(63)
param backupContainerName string = 'tcab'

@allowed(['Standard_LRS', 'Standard_ZRS', 'Standard_GRS', 'Standard_RAGRS', 'Standard_GZRS', 'Standard_RAGZRS'])
param backupStorageSku string = 'Standard_GRS'

@description('The Cloudflare R2 target, r2://<account-id>/<bucket>[/<prefix>] (or s3://...); empty to back up to Azure only.')
param r2TargetUrl string = ''

@secure()
@description('R2 API token access key id. Written to Key Vault when given; otherwise set the secret "r2-access-key-id" yourself.')
param r2AccessKeyId string = ''

@secure()
@description('R2 API token secret access key. Written to Key Vault when given; otherwise set the secret "r2-secret-access-key" yourself.')
param r2SecretAccessKey string = ''

@description('Retention of the Azure Blob target (TCAB_BACKUP_RETENTION_BLOB).')
param retentionBlob retentionPolicy = { last: 24, hourly: 24, daily: 14, weekly: 8, monthly: 12 }

@description('Retention of the R2 target (TCAB_BACKUP_RETENTION_R2).')
param retentionR2 retentionPolicy = { last: 24, hourly: 24, daily: 14, weekly: 8, monthly: 12 }

@minValue(1)
@maxValue(365)
@description('Soft delete of blobs and containers in the backup account, in days.')
param softDeleteDays int = 7

@minValue(0)
@maxValue(146000)
@description('Version-level WORM period of the backup account in days; 0 leaves it off. Once on, the account stays immutability-enabled.')
param immutabilityDays int = 0

@minValue(0)
@description('Lifecycle backstop: tier snapshots to Cool after this many days; 0 never.')
param coolAfterDays int = 30

@minValue(0)
@description('Lifecycle backstop: delete snapshots after this many days, pinned or not; 0 never. Must exceed the Blob retention horizon.')
param deleteAfterDays int = 400

@minValue(1)
@description('Lifecycle: delete previous blob versions (left by prunes and overwrites) after this many days. Each pruned snapshot lives on this long as a version, so it is the window to undo a bad prune; storage grows with it.')
param previousVersionDeleteAfterDays int = 7

// ---- Schedules (NCRONTAB, six fields, UTC) and the absence alerts that watch them -----------------

param snapshotSchedule string = '0 */5 * * * *'
param replicateSchedule string = '0 20 * * * *'
param pruneSchedule string = '0 45 * * * *'
param verifySchedule string = '0 0 5 * * *'
param drillSchedule string = '0 0 4 * * *'
param monitorSchedule string = '0 */5 * * * *'
param pgCheckSchedule string = '0 15 * * * *'
@description('Ticks of the Postgres drill: each tick advances the current drill one step; a new drill starts every TCAB_BACKUP_PG_DRILL_INTERVAL (7d by default).')
param pgDrillSchedule string = '0 */10 * * * *'

@minValue(1)
@description('Minutes between two snapshots as snapshotSchedule makes them; turns retention "last" into days.')
param snapshotIntervalMinutes int = 5

@description('Absence alerts: minutes without the job\'s success event before an alert (interval plus grace; at most 2880). The snapshot alert waits at least 2 x snapshotIntervalMinutes.')
param alertAfterMinutes {
  @minValue(15)
  @maxValue(2880)
  snapshot: int
  @minValue(15)
  @maxValue(2880)
  verify: int
  @minValue(15)
  @maxValue(2880)
  drill: int
  @minValue(15)
  @maxValue(2880)
  monitor: int
  @minValue(15)
  @maxValue(2880)
  pgCheck: int
} = { snapshot: 30, verify: 1560, drill: 1560, monitor: 30, pgCheck: 180 }

// ---- Postgres mode (off while pgServerIds is empty) -----------------------------------------------

@description('Comma-separated ARM ids of the PostgreSQL flexible servers to check and drill (TCAB_BACKUP_PG_SERVERS); empty turns Postgres mode off.')
param pgServerIds string = ''

@allowed(['password', 'entra'])
@description('How drills sign in to the restored server: a password from Key Vault, or an Entra token of the function identity.')
param pgDrillAuth string = 'password'

@description('Role the drill signs in with on the restored server.')
param pgDrillUser string = ''

@secure()
@description('Password of pgDrillUser. Written to Key Vault when given; otherwise set the secret "pg-drill-password" yourself.')
param pgDrillPassword string = ''

@minValue(7)
@maxValue(35)
param pgMinRetentionDays int = 7

param pgRequireGeoRedundantBackup bool = false

// ---- Alerts and the rest --------------------------------------------------------------------------

@minLength(3)
@description('Comma-separated e-mail addresses that receive alerts.')
param alertEmails string

@secure()
@description('HTTPS webhook receiving alerts (common alert schema); empty for none. Secure because such URLs often carry a token.')
param alertWebhookUrl string = ''

@allowed([512, 2048, 4096])
param functionInstanceMemoryMB int = 2048

@minValue(1)
@maxValue(1000)
param functionMaximumInstanceCount int = 40

@minValue(30)
@maxValue(730)
param logRetentionDays int = 30

@description('Purge protection keeps a deleted vault recoverable for 90 days and cannot be turned off again.')
param keyVaultPurgeProtection bool = true

@description('Mount an Azure Files share at /mounts/drill and let restore drills restore there, so they run integrity_check and the row counts themselves on a database larger than a Flex instance\'s 0.8 GB temporary disk. SMB authenticates with an account key: the share has a storage account of its own, holding only the drill\'s scratch copy. false: a drill that does not fit the temporary disk verifies by streaming (both sha256 sums) instead.')
param drillShare bool = true

@minValue(1)
@maxValue(5120)
@description('Quota of the drill share in GiB: at least the uncompressed database, with room to grow.')
param drillShareQuotaGiB int = 8

@description('More app settings (e.g. TCAB_BACKUP_AGENT_TIMEOUT); they override the template\'s TCAB_BACKUP_* settings, never the identity-based connections.')
param extraAppSettings stringMap = {}

// ---- Names ----------------------------------------------------------------------------------------

var resourceToken = toLower(uniqueString(subscription().id, environmentName, location))
var tags = { 'azd-env-name': environmentName, application: 'tcab-backup' }
var names = {
  resourceGroup: empty(resourceGroupName) ? 'rg-${environmentName}' : resourceGroupName
  identity: 'id-tcab-backup-${resourceToken}'
  logAnalytics: 'log-tcab-backup-${resourceToken}'
  applicationInsights: 'appi-tcab-backup-${resourceToken}'
  runtimeStorage: 'stfn${resourceToken}'
  backupStorage: 'stbak${resourceToken}'
  drillStorage: 'stdrill${resourceToken}'
  keyVault: 'kv-tcab-${resourceToken}'
  plan: 'plan-tcab-backup-${resourceToken}'
  functionApp: 'func-tcab-backup-${resourceToken}'
  alerts: 'tcab-backup-${resourceToken}'
}
var keyVaultUri = 'https://${names.keyVault}${environment().suffixes.keyvaultDns}/'
var secretNames = {
  agentKey: 'agent-key'
  r2AccessKeyId: 'r2-access-key-id'
  r2SecretAccessKey: 'r2-secret-access-key'
  pgDrillPassword: 'pg-drill-password'
}

// ---- Checks that stop a deployment before anything is created --------------------------------------

var checkedAgentUrl = startsWith(toLower(agentUrl), 'https://')
  ? agentUrl
  : fail('agentUrl "${agentUrl}" must be an https:// URL such as https://10.0.1.4:8787: the agent accepts plain HTTP on loopback only. Give the agent a certificate (docs/deploy.md, "The VM side").')

var checkedR2TargetUrl = empty(r2TargetUrl) || startsWith(r2TargetUrl, 'r2://') || startsWith(r2TargetUrl, 's3://')
  ? r2TargetUrl
  : fail('r2TargetUrl "${r2TargetUrl}" must look like r2://<account-id>/<bucket>[/<prefix>] (or s3://<bucket>?endpoint=...), or be empty.')

var blobRetentionDays = retentionHorizonDays(retentionBlob, snapshotIntervalMinutes)
var checkedDeleteAfterDays = deleteAfterDays == 0
  ? 0
  : blobRetentionDays == -1
      ? fail('deleteAfterDays is ${deleteAfterDays}, but retentionBlob keeps some period without limit (-1): the lifecycle rule would delete what retention keeps. Set deleteAfterDays to 0 or give every retentionBlob rule a count.')
      : deleteAfterDays > blobRetentionDays
          ? deleteAfterDays
          : fail('deleteAfterDays (${deleteAfterDays}) must be greater than the longest Blob retention, ${blobRetentionDays} days for retentionBlob ${retentionSetting(retentionBlob)}: the lifecycle rule is a backstop and may not delete what retention keeps. Raise deleteAfterDays or shorten retentionBlob.')
var checkedCoolAfterDays = coolAfterDays == 0 || checkedDeleteAfterDays == 0 || coolAfterDays < checkedDeleteAfterDays
  ? coolAfterDays
  : fail('coolAfterDays (${coolAfterDays}) must be smaller than deleteAfterDays (${deleteAfterDays}).')

var pgServerIdList = filter(map(split(pgServerIds, ','), id => trim(id)), id => !empty(id))
var pgEnabled = !empty(pgServerIdList)
var checkedPgServerIds = [
  for id in pgServerIdList: length(split(id, '/')) == 9 && toLower(split(id, '/')[6]) == 'microsoft.dbforpostgresql' && toLower(split(id, '/')[7]) == 'flexibleservers'
    ? id
    : fail('pgServerIds: "${id}" is not the ARM id of a PostgreSQL flexible server (/subscriptions/<id>/resourceGroups/<group>/providers/Microsoft.DBforPostgreSQL/flexibleServers/<name>).')
]
var checkedPgDrillUser = !pgEnabled || !empty(pgDrillUser)
  ? pgDrillUser
  : fail('pgDrillUser is empty, but pgServerIds turns Postgres mode on: the drill needs a role to sign in to the restored server with.')
// Deduplicated: one custom role per resource group, however many servers it holds.
var pgResourceGroupIds = union(map(checkedPgServerIds, id => toLower(join(take(split(id, '/'), 5), '/'))), [])

var checkedFunctionSubnetId = empty(agentNetworkSecurityGroupId) || !empty(functionSubnetId)
  ? functionSubnetId
  : fail('agentNetworkSecurityGroupId is set but functionSubnetId is empty: the NSG rule admits only the function app\'s integration subnet, so the app needs one.')

// ---- App settings -----------------------------------------------------------------------------------

var r2Enabled = !empty(checkedR2TargetUrl)
var targets = concat(
  ['blob=azblob://${names.backupStorage}/${backupContainerName}'],
  r2Enabled ? ['r2=${checkedR2TargetUrl}'] : []
)

// The monitor's snapshot ages and the absence alert follow the schedule: 30m and 1h for the default every 5
// minutes, and never less than 2 and 4 intervals (2h and 4h for an hourly schedule), so that a slower schedule
// does not warn between every two snapshots.
var snapshotWarnMinutes = max(30, 2 * snapshotIntervalMinutes)
var snapshotCriticalMinutes = max(60, 4 * snapshotIntervalMinutes)
var snapshotAlertMinutes = min(2880, max(alertAfterMinutes.snapshot, 2 * snapshotIntervalMinutes))

var backupSettings = {
  TCAB_BACKUP_TARGETS: join(targets, ',')
  TCAB_BACKUP_DATABASE: databaseName
  TCAB_BACKUP_AGENT_URL: checkedAgentUrl
  TCAB_BACKUP_AGENT_KEY_ID: agentKeyId
  TCAB_BACKUP_AGENT_KEY: keyVaultReference(keyVaultUri, secretNames.agentKey)
  TCAB_BACKUP_SNAPSHOT_SCHEDULE: snapshotSchedule
  TCAB_BACKUP_REPLICATE_SCHEDULE: replicateSchedule
  TCAB_BACKUP_PRUNE_SCHEDULE: pruneSchedule
  TCAB_BACKUP_VERIFY_SCHEDULE: verifySchedule
  TCAB_BACKUP_DRILL_SCHEDULE: drillSchedule
  TCAB_BACKUP_MONITOR_SCHEDULE: monitorSchedule
  TCAB_BACKUP_SNAPSHOT_WARN_AGE: '${snapshotWarnMinutes}m'
  TCAB_BACKUP_SNAPSHOT_CRITICAL_AGE: '${snapshotCriticalMinutes}m'
  TCAB_BACKUP_RETENTION_BLOB: retentionSetting(retentionBlob)
  TCAB_BACKUP_PG_SERVERS: join(checkedPgServerIds, ',')
  TCAB_BACKUP_PG_CHECK_SCHEDULE: pgCheckSchedule
  TCAB_BACKUP_PG_DRILL_SCHEDULE: pgDrillSchedule
}

var r2Settings = r2Enabled
  ? {
      TCAB_BACKUP_RETENTION_R2: retentionSetting(retentionR2)
      TCAB_BACKUP_TARGET_R2_ACCESS_KEY_ID: keyVaultReference(keyVaultUri, secretNames.r2AccessKeyId)
      TCAB_BACKUP_TARGET_R2_SECRET_ACCESS_KEY: keyVaultReference(keyVaultUri, secretNames.r2SecretAccessKey)
    }
  : {}

var agentCaSettings = empty(agentCaPem) ? {} : { TCAB_BACKUP_AGENT_CA: agentCaPem }

var drillMountPath = '/mounts/drill'
var drillSettings = drillShare ? { TCAB_BACKUP_DRILL_WORK_DIR: drillMountPath } : {}

var pgSettings = !pgEnabled
  ? {}
  : union(
      {
        TCAB_BACKUP_PG_MIN_RETENTION_DAYS: string(pgMinRetentionDays)
        TCAB_BACKUP_PG_REQUIRE_GEO_REDUNDANT: pgRequireGeoRedundantBackup ? 'true' : 'false'
        TCAB_BACKUP_PG_DRILL_USER: checkedPgDrillUser
      },
      pgDrillAuth == 'entra'
        ? { TCAB_BACKUP_PG_DRILL_AUTH: 'entra' }
        : { TCAB_BACKUP_PG_DRILL_PASSWORD: keyVaultReference(keyVaultUri, secretNames.pgDrillPassword) }
    )

// ---- Resources --------------------------------------------------------------------------------------

resource rg 'Microsoft.Resources/resourceGroups@2025-04-01' = {
  name: names.resourceGroup
  location: location
  tags: tags
}

module identity 'modules/identity.bicep' = {
  name: 'identity'
  scope: rg
  params: { name: names.identity, location: location, tags: tags }
}

module monitoring 'modules/monitoring.bicep' = {
  name: 'monitoring'
  scope: rg
  params: {
    logAnalyticsName: names.logAnalytics
    applicationInsightsName: names.applicationInsights
    location: location
    tags: tags
    publisherPrincipalId: identity.outputs.principalId
    retentionDays: logRetentionDays
  }
}

module runtimeStorage 'modules/runtime-storage.bicep' = {
  name: 'runtime-storage'
  scope: rg
  params: {
    name: names.runtimeStorage
    location: location
    tags: tags
    deploymentContainerName: 'app-package'
    principalId: identity.outputs.principalId
  }
}

module backupStorage 'modules/backup-storage.bicep' = {
  name: 'backup-storage'
  scope: rg
  params: {
    name: names.backupStorage
    location: location
    tags: tags
    containerName: backupContainerName
    skuName: backupStorageSku
    writerPrincipalId: identity.outputs.principalId
    readerPrincipalId: principalId
    softDeleteDays: softDeleteDays
    immutabilityDays: immutabilityDays
    coolAfterDays: checkedCoolAfterDays
    deleteAfterDays: checkedDeleteAfterDays
    previousVersionDeleteAfterDays: previousVersionDeleteAfterDays
  }
}

module drillStorage 'modules/drill-share.bicep' = if (drillShare) {
  name: 'drill-share'
  scope: rg
  params: {
    name: names.drillStorage
    location: location
    tags: tags
    shareName: 'drill'
    quotaGiB: drillShareQuotaGiB
  }
}

module keyVault 'modules/key-vault.bicep' = {
  name: 'key-vault'
  scope: rg
  params: {
    name: names.keyVault
    location: location
    tags: tags
    readerPrincipalId: identity.outputs.principalId
    officerPrincipalId: principalId
    enablePurgeProtection: keyVaultPurgeProtection
    secretNames: secretNames
    agentKey: agentKey
    r2AccessKeyId: r2AccessKeyId
    r2SecretAccessKey: r2SecretAccessKey
    pgDrillPassword: pgDrillPassword
  }
}

module functionApp 'modules/function-app.bicep' = {
  name: 'function-app'
  scope: rg
  params: {
    name: names.functionApp
    planName: names.plan
    location: location
    tags: tags
    serviceName: 'backup'
    identityId: identity.outputs.id
    identityClientId: identity.outputs.clientId
    runtimeStorageName: runtimeStorage.outputs.name
    runtimeBlobEndpoint: runtimeStorage.outputs.blobEndpoint
    deploymentContainerName: runtimeStorage.outputs.deploymentContainerName
    applicationInsightsConnectionString: monitoring.outputs.connectionString
    subnetId: checkedFunctionSubnetId
    instanceMemoryMB: functionInstanceMemoryMB
    maximumInstanceCount: functionMaximumInstanceCount
    appSettings: union(backupSettings, r2Settings, agentCaSettings, pgSettings, drillSettings, extraAppSettings)
    drillShareAccountName: drillShare ? drillStorage!.outputs.name : ''
    drillShareName: drillShare ? drillStorage!.outputs.shareName : ''
    drillMountPath: drillShare ? drillMountPath : ''
  }
  // Key Vault references resolve when the app starts: the vault, its secrets and the identity's
  // access must exist by then, or the app starts with unresolved references.
  dependsOn: [keyVault, backupStorage]
}

var absenceChecks absenceCheck[] = concat(
  [
    {
      name: 'no-snapshot'
      title: 'no snapshot in ${snapshotAlertMinutes} minutes'
      description: 'No snapshot.completed event within ${snapshotAlertMinutes} minutes. Check that snapshotTimer runs (Application Insights > Failures), that the agent at ${agentUrl} answers, and the function app\'s health.'
      event: 'snapshot.completed'
      minutes: snapshotAlertMinutes
      severity: 1
    }
    {
      name: 'no-verify'
      title: 'no verification in ${alertAfterMinutes.verify} minutes'
      description: 'No verify.completed event within ${alertAfterMinutes.verify} minutes: stored artifacts are not being re-read. Check verifyTimer in Application Insights.'
      event: 'verify.completed'
      minutes: alertAfterMinutes.verify
      severity: 2
    }
    {
      name: 'no-drill'
      title: 'no restore drill in ${alertAfterMinutes.drill} minutes'
      description: 'No drill.completed event within ${alertAfterMinutes.drill} minutes: nothing proves that a snapshot restores. Check drillTimer in Application Insights, or run `tcab-backup drill`.'
      event: 'drill.completed'
      minutes: alertAfterMinutes.drill
      severity: 1
    }
    {
      name: 'no-monitor'
      title: 'monitor silent for ${alertAfterMinutes.monitor} minutes'
      description: 'No monitor.status event within ${alertAfterMinutes.monitor} minutes: the job that watches the others is not running. Check that the function app is running.'
      event: 'monitor.status'
      minutes: alertAfterMinutes.monitor
      severity: 1
    }
  ],
  pgEnabled
    ? [
        {
          name: 'no-pg-check'
          title: 'no Postgres backup check in ${alertAfterMinutes.pgCheck} minutes'
          description: 'No pg.check.completed event within ${alertAfterMinutes.pgCheck} minutes: the provider backup policy of the Postgres servers is not being checked. Check pgCheckTimer in Application Insights.'
          event: 'pg.check.completed'
          minutes: alertAfterMinutes.pgCheck
          severity: 2
        }
        // Postgres drills run days apart (TCAB_BACKUP_PG_DRILL_INTERVAL), beyond the two days a log
        // alert can look back; the monitor's drill age (critical state) covers them instead.
      ]
    : []
)

module alerts 'modules/alerts.bicep' = {
  name: 'alerts'
  scope: rg
  params: {
    namePrefix: names.alerts
    location: location
    tags: tags
    workspaceId: monitoring.outputs.workspaceId
    emails: map(filter(split(alertEmails, ','), email => !empty(trim(email))), email => trim(email))
    webhookUrl: alertWebhookUrl
    functionNames: [
      'snapshotTimer'
      'snapshotHttp'
      'replicateTimer'
      'pruneTimer'
      'verifyTimer'
      'drillTimer'
      'monitorTimer'
      'statusHttp'
      'pgCheckTimer'
      'pgDrillTimer'
    ]
    absenceChecks: absenceChecks
  }
}

module pgAccess 'modules/postgres-access.bicep' = [
  for rgId in pgResourceGroupIds: {
    name: 'pg-access-${uniqueString(rgId)}'
    scope: resourceGroup(split(rgId, '/')[2], split(rgId, '/')[4])
    params: { principalId: identity.outputs.principalId }
  }
]

module pgLock 'modules/postgres-lock.bicep' = [
  for id in checkedPgServerIds: {
    name: 'pg-lock-${uniqueString(id)}'
    scope: resourceGroup(resourceIdParts(id).subscriptionId, resourceIdParts(id).resourceGroup)
    params: { serverName: resourceIdParts(id).name }
  }
]

module agentNetworkRule 'modules/agent-network-rule.bicep' = if (!empty(agentNetworkSecurityGroupId)) {
  name: 'agent-network-rule'
  scope: resourceGroup(resourceIdParts(agentNetworkSecurityGroupId).subscriptionId, resourceIdParts(agentNetworkSecurityGroupId).resourceGroup)
  params: {
    networkSecurityGroupName: resourceIdParts(agentNetworkSecurityGroupId).name
    functionSubnetId: checkedFunctionSubnetId
    agentPort: agentPort
    priority: agentNsgRulePriority
  }
}

// ---- Outputs (azd stores them in the environment: `azd env get-values`) ----------------------------

output AZURE_LOCATION string = location
output AZURE_TENANT_ID string = tenant().tenantId
output AZURE_RESOURCE_GROUP string = rg.name
output AZURE_FUNCTION_APP_NAME string = functionApp.outputs.name
output AZURE_KEY_VAULT_NAME string = keyVault.outputs.name
output AZURE_BACKUP_STORAGE_ACCOUNT string = backupStorage.outputs.name
output AZURE_BACKUP_IDENTITY_CLIENT_ID string = identity.outputs.clientId
output TCAB_BACKUP_TARGETS string = join(targets, ',')
output TCAB_BACKUP_DATABASE string = databaseName
