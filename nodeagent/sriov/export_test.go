package sriov

// ConfigOf is configOf.
var ConfigOf = configOf
