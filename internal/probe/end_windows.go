package probe

import "syscall"

// resetErrors are the errors a read returns for a TCP reset. Windows
// reports its own WSA codes, which syscall.ECONNRESET does not match.
var resetErrors = []error{syscall.WSAECONNRESET, syscall.WSAECONNABORTED}
