// Log Analytics workspace and workspace-based Application Insights with local (key) auth disabled:
// telemetry is accepted only with an Entra token, which the function app gets from its identity.
import { tagSet } from 'types.bicep'

param logAnalyticsName string
param applicationInsightsName string
param location string
param tags tagSet
@description('Principal that sends telemetry (the function app identity).')
param publisherPrincipalId string
@minValue(30)
@maxValue(730)
param retentionDays int

var monitoringMetricsPublisher = '3913510d-42f4-4e42-8a64-420c390055eb'

resource workspace 'Microsoft.OperationalInsights/workspaces@2025-02-01' = {
  name: logAnalyticsName
  location: location
  tags: tags
  properties: {
    sku: { name: 'PerGB2018' }
    retentionInDays: retentionDays
    features: { disableLocalAuth: true }
  }
}

resource appInsights 'Microsoft.Insights/components@2020-02-02' = {
  name: applicationInsightsName
  location: location
  tags: tags
  kind: 'web'
  properties: {
    Application_Type: 'web'
    WorkspaceResourceId: workspace.id
    DisableLocalAuth: true
    IngestionMode: 'LogAnalytics'
  }
}

resource publisher 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(appInsights.id, publisherPrincipalId, monitoringMetricsPublisher)
  scope: appInsights
  properties: {
    principalId: publisherPrincipalId
    principalType: 'ServicePrincipal'
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', monitoringMetricsPublisher)
  }
}

output workspaceId string = workspace.id
output applicationInsightsName string = appInsights.name
output connectionString string = appInsights.properties.ConnectionString
