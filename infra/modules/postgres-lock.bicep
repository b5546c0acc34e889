// A CanNotDelete lock on a watched (source) server: the drill identity can delete servers in this
// resource group, and the lock makes sure no bug, sweeper mistake or misread id can make that the
// source. Locks also block deleting the server's child resources (databases, firewall rules).
param serverName string

resource server 'Microsoft.DBforPostgreSQL/flexibleServers@2025-08-01' existing = {
  name: serverName
}

resource lock 'Microsoft.Authorization/locks@2020-05-01' = {
  name: 'tcab-backup-source-server'
  scope: server
  properties: {
    level: 'CanNotDelete'
    notes: 'Source of tcab-backup point-in-time-restore drills. Remove this lock deliberately before deleting the server.'
  }
}
