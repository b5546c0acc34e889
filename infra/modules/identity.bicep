// The one identity the function app runs as: storage, Key Vault, Application Insights and ARM all see
// this principal, so access is granted (and revoked) in one place and survives re-creating the app.
import { tagSet } from 'types.bicep'

param name string
param location string
param tags tagSet

resource identity 'Microsoft.ManagedIdentity/userAssignedIdentities@2024-11-30' = {
  name: name
  location: location
  tags: tags
}

output id string = identity.id
output name string = identity.name
output principalId string = identity.properties.principalId
output clientId string = identity.properties.clientId
