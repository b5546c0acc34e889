// Alerts on what the jobs did and on what they failed to do. A job that fails throws, so its
// invocation shows in AppRequests with Success == false; a timer that never runs never fails, so
// absence rules watch the JSON event lines the jobs write to AppTraces.
import { absenceCheck, tagSet } from 'types.bicep'

param namePrefix string
param location string
param tags tagSet
@description('Log Analytics workspace behind Application Insights; dedicated to this deployment, so rules need no app filter.')
param workspaceId string
param emails string[]
@secure()
@description('HTTPS endpoint that receives the common alert schema; empty for none.')
param webhookUrl string
@description('Function names (as registered with app.timer/app.http) whose failed invocations alert.')
param functionNames string[]
param absenceChecks absenceCheck[]

resource actionGroup 'Microsoft.Insights/actionGroups@2023-01-01' = {
  name: '${namePrefix}-operators'
  location: 'global'
  tags: tags
  properties: {
    groupShortName: take(replace(namePrefix, '-', ''), 12)
    enabled: true
    emailReceivers: [for (email, i) in emails: { name: 'email-${i}', emailAddress: email, useCommonAlertSchema: true }]
    webhookReceivers: empty(webhookUrl) ? [] : [{ name: 'webhook', serviceUri: webhookUrl, useCommonAlertSchema: true }]
  }
}

// The jobs log one JSON object per line; the object may follow a prefix added by the host.
var parseEvent = 'extend e = parse_json(extract(@"(\\{.*\\})", 1, Message))'

// 4xx answers of the HTTP functions are the caller's mistake, shown to the caller; anything else
// that did not succeed is a failed job.
resource failedInvocations 'Microsoft.Insights/scheduledQueryRules@2023-12-01' = [
  for fn in functionNames: {
    name: '${namePrefix}-failed-${fn}'
    location: location
    tags: tags
    kind: 'LogAlert'
    properties: {
      displayName: 'tcab-backup: ${fn} failed'
      description: 'An invocation of ${fn} failed. Open Application Insights > Failures (operation ${fn}) for the error; its message names the target, snapshot or server and what to check.'
      severity: 1
      enabled: true
      scopes: [workspaceId]
      evaluationFrequency: 'PT5M'
      windowSize: 'PT5M'
      autoMitigate: true
      criteria: {
        allOf: [
          {
            query: 'AppRequests | where Name == "${fn}" and Success == false and not(ResultCode startswith "4")'
            timeAggregation: 'Count'
            operator: 'GreaterThan'
            threshold: 0
            failingPeriods: { numberOfEvaluationPeriods: 1, minFailingPeriodsToAlert: 1 }
          }
        ]
      }
      actions: { actionGroups: [actionGroup.id], customProperties: { function: fn } }
    }
  }
]

// Count < 1 over the look-back fires when no matching event arrived at all: an empty result counts 0.
resource absence 'Microsoft.Insights/scheduledQueryRules@2023-12-01' = [
  for check in absenceChecks: {
    name: '${namePrefix}-${check.name}'
    location: location
    tags: tags
    kind: 'LogAlert'
    properties: {
      displayName: 'tcab-backup: ${check.title}'
      description: check.description
      severity: check.severity
      enabled: true
      scopes: [workspaceId]
      evaluationFrequency: 'PT15M'
      windowSize: 'PT15M'
      overrideQueryTimeRange: 'PT${check.minutes}M'
      autoMitigate: true
      criteria: {
        allOf: [
          {
            query: 'AppTraces | where TimeGenerated > ago(${check.minutes}m) and Message contains "${check.event}" | ${parseEvent} | where tostring(e.event) == "${check.event}"${check.?condition ?? ''}'
            timeAggregation: 'Count'
            operator: 'LessThan'
            threshold: 1
            failingPeriods: { numberOfEvaluationPeriods: 1, minFailingPeriodsToAlert: 1 }
          }
        ]
      }
      actions: { actionGroups: [actionGroup.id], customProperties: { event: check.event } }
    }
  }
]

resource monitorCritical 'Microsoft.Insights/scheduledQueryRules@2023-12-01' = {
  name: '${namePrefix}-monitor-critical'
  location: location
  tags: tags
  kind: 'LogAlert'
  properties: {
    displayName: 'tcab-backup: monitor reports critical'
    description: 'The monitor job found the backups in a critical state (a target without a fresh snapshot, a failed or stale drill, a stale Postgres check). Run `tcab-backup status --json` for the details.'
    severity: 0
    enabled: true
    scopes: [workspaceId]
    evaluationFrequency: 'PT15M'
    windowSize: 'PT15M'
    autoMitigate: true
    criteria: {
      allOf: [
        {
          query: 'AppTraces | where Message contains "monitor.status" | ${parseEvent} | where tostring(e.event) == "monitor.status" and tostring(e.state) == "critical"'
          timeAggregation: 'Count'
          operator: 'GreaterThan'
          threshold: 0
          failingPeriods: { numberOfEvaluationPeriods: 1, minFailingPeriodsToAlert: 1 }
        }
      ]
    }
    actions: { actionGroups: [actionGroup.id], customProperties: { event: 'monitor.status' } }
  }
}

output actionGroupId string = actionGroup.id
