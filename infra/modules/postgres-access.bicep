// Postgres mode: what the function identity may do in the resource group of a watched server. The
// policy check reads servers and their backups; the point-in-time-restore drill creates a server next
// to the source, polls the long-running operation and deletes the drill server again. Nothing more:
// no firewall, network, database or role changes.
param principalId string

var actions = [
  'Microsoft.DBforPostgreSQL/flexibleServers/read'
  'Microsoft.DBforPostgreSQL/flexibleServers/backups/read'
  'Microsoft.DBforPostgreSQL/flexibleServers/write'
  'Microsoft.DBforPostgreSQL/flexibleServers/delete'
  'Microsoft.DBforPostgreSQL/locations/azureAsyncOperation/read'
  'Microsoft.DBforPostgreSQL/locations/operationResults/read'
]

resource role 'Microsoft.Authorization/roleDefinitions@2022-04-01' = {
  name: guid(resourceGroup().id, 'tcab-backup-postgres-drill')
  properties: {
    // Role names are unique per tenant, so the resource group id is part of it.
    roleName: 'tcab-backup Postgres backup check and drill (${uniqueString(resourceGroup().id)})'
    description: 'Read PostgreSQL flexible servers and their backups; create and delete servers for point-in-time-restore drills. Source servers carry a CanNotDelete lock.'
    type: 'customRole'
    permissions: [{ actions: actions, notActions: [] }]
    assignableScopes: [resourceGroup().id]
  }
}

resource assignment 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(resourceGroup().id, principalId, role.id)
  properties: {
    principalId: principalId
    principalType: 'ServicePrincipal'
    roleDefinitionId: role.id
  }
}

output roleDefinitionId string = role.id
output actions string[] = actions
