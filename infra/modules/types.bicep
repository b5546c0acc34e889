// Shapes and small pure functions shared by main.bicep and the modules.

@export()
@description('Resource tags.')
type tagSet = { *: string }

@export()
@description('Name -> value pairs: app settings, or secrets by name.')
type stringMap = { *: string }

@export()
type resourceIdPartSet = {
  subscriptionId: string
  resourceGroup: string
  name: string
}

@export()
@description('Calendar retention of one target, restic "forget" semantics: keep the newest snapshot of each of the last N periods (-1: every period). Rules are OR-ed.')
type retentionPolicy = {
  @description('Keep the N newest snapshots.')
  @minValue(-1)
  last: int?
  @minValue(-1)
  hourly: int?
  @minValue(-1)
  daily: int?
  @description('ISO weeks.')
  @minValue(-1)
  weekly: int?
  @minValue(-1)
  monthly: int?
  @minValue(-1)
  yearly: int?
}

@export()
@description('The TCAB_BACKUP_RETENTION_<NAME> value, e.g. "daily=14,hourly=24,monthly=12,weekly=8".')
func retentionSetting(policy retentionPolicy) string =>
  join(map(filter(items(policy), rule => rule.value != null), rule => '${rule.key}=${rule.value}'), ',')

@export()
@description('How many days back the policy can reach when every period holds a snapshot, or -1 when a rule is unlimited. Months count as 31 days and years as 366, so the figure errs long.')
func retentionHorizonDays(policy retentionPolicy, snapshotIntervalMinutes int) int =>
  contains(map(items(policy), rule => rule.value), -1)
    ? -1
    : max(
        ((policy.?last ?? 0) * snapshotIntervalMinutes + 1439) / 1440,
        ((policy.?hourly ?? 0) + 23) / 24,
        policy.?daily ?? 0,
        (policy.?weekly ?? 0) * 7,
        (policy.?monthly ?? 0) * 31,
        (policy.?yearly ?? 0) * 366
      )

@export()
@description('A Key Vault reference app setting: App Service resolves it with the identity named by keyVaultReferenceIdentity. No version, so a rotated secret is picked up.')
func keyVaultReference(vaultUri string, secretName string) string => '@Microsoft.KeyVault(SecretUri=${vaultUri}secrets/${secretName})'

@export()
@description('The parts of an ARM resource id: subscription, resource group, name.')
func resourceIdParts(id string) resourceIdPartSet => {
  subscriptionId: split(id, '/')[2]
  resourceGroup: split(id, '/')[4]
  name: last(split(id, '/'))
}

@export()
@description('An alert that fires when no event of a kind was logged within a look-back.')
type absenceCheck = {
  @description('Rule name suffix, e.g. "no-snapshot".')
  name: string
  title: string
  description: string
  @description('The "event" field of the JSON log line.')
  event: string
  @description('KQL appended to the query, e.g. to require a field value.')
  condition: string?
  @description('Look-back: the job\'s interval plus grace. Azure caps a log alert look-back at two days.')
  @minValue(15)
  @maxValue(2880)
  minutes: int
  @minValue(0)
  @maxValue(4)
  severity: int
}
