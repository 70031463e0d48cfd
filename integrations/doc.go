// Package integrations tests conntrace against what other libraries
// really produce: the presigned URLs of the AWS SDK for Go v2, and Google
// Cloud Storage's V4 signed URLs. It is a module of its own, so that the
// conntrace library requires none of those SDKs.
package integrations
