// Lets only the function app's integration subnet reach the snapshot agent port on the VM. The allow
// rule alone is not enough: the default AllowVnetInBound rule (65000) admits every address in the
// VNet and its peers, so a deny rule for the same port follows right after it.
param networkSecurityGroupName string
@description('ARM id of the function app integration subnet: its address prefixes become the only allowed source.')
param functionSubnetId string
@minValue(1)
@maxValue(65535)
param agentPort int
@description('Priority of the allow rule; the deny rule takes the next number.')
@minValue(100)
@maxValue(4095)
param priority int

resource nsg 'Microsoft.Network/networkSecurityGroups@2025-05-01' existing = {
  name: networkSecurityGroupName
}

// /subscriptions/<s>/resourceGroups/<rg>/providers/Microsoft.Network/virtualNetworks/<vnet>/subnets/<subnet>
var subnetIdParts = split(functionSubnetId, '/')

resource functionSubnet 'Microsoft.Network/virtualNetworks/subnets@2025-05-01' existing = {
  scope: resourceGroup(subnetIdParts[2], subnetIdParts[4])
  name: '${subnetIdParts[8]}/${subnetIdParts[10]}'
}

var sourceAddressPrefixes = functionSubnet.properties.?addressPrefixes ?? [functionSubnet.properties.addressPrefix]

resource allow 'Microsoft.Network/networkSecurityGroups/securityRules@2025-05-01' = {
  parent: nsg
  name: 'tcab-backup-agent-allow-functions'
  properties: {
    description: 'tcab-backup: the function app reaches the snapshot agent.'
    priority: priority
    direction: 'Inbound'
    access: 'Allow'
    protocol: 'Tcp'
    sourceAddressPrefixes: sourceAddressPrefixes
    sourcePortRange: '*'
    destinationAddressPrefix: '*'
    destinationPortRange: string(agentPort)
  }
}

resource deny 'Microsoft.Network/networkSecurityGroups/securityRules@2025-05-01' = {
  parent: nsg
  name: 'tcab-backup-agent-deny-others'
  properties: {
    description: 'tcab-backup: nothing else reaches the snapshot agent port.'
    priority: priority + 1
    direction: 'Inbound'
    access: 'Deny'
    protocol: '*'
    sourceAddressPrefix: '*'
    sourcePortRange: '*'
    destinationAddressPrefix: '*'
    destinationPortRange: string(agentPort)
  }
}
