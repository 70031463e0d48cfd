//go:build !windows

package probe

import "syscall"

// resetErrors are the errors a read returns for a TCP reset.
var resetErrors = []error{syscall.ECONNRESET, syscall.ECONNABORTED}
