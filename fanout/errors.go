package fanout

import "github.com/dingmq/ding/engine"

// The directory's error codes (see engine.Code); their errors are in the
// files of what they are about.
const (
	CodeUnknownUser        engine.Code = "UNKNOWN_USER"
	CodeUnknownDepartment  engine.Code = "UNKNOWN_DEPARTMENT"
	CodeUnknownGroup       engine.Code = "UNKNOWN_GROUP"
	CodeDepartmentCycle    engine.Code = "DEPARTMENT_CYCLE"
	CodeDepartmentNotEmpty engine.Code = "DEPARTMENT_NOT_EMPTY"
	CodeBadImport          engine.Code = "BAD_IMPORT"
	CodeUserExists         engine.Code = "USER_EXISTS"
	CodeAdminExists        engine.Code = "ADMIN_EXISTS"
	CodeUnknownAdmin       engine.Code = "UNKNOWN_ADMIN"
	CodeLastOwner          engine.Code = "LAST_OWNER"
)
