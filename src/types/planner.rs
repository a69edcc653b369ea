//! The planner support function of the distance functions (`SUPPORT akidb_distance_support`
//! in sql/vector_operators.sql): it answers SupportRequestCost with what one call really
//! costs, which grows with the dimensions and, for a vector stored out of line, with its
//! TOAST fetch (`akidb_core::hnsw::cost::distance_call`). Without it PostgreSQL charges a
//! distance one cpu_operator_cost whatever its size, and costs a sequential scan that
//! sorts 10,000 TOASTed 784-d rows (30 ms) at less than an index scan (0.3 ms).

use akidb_core::hnsw::cost;
use pgrx::pg_sys;
use pgrx::prelude::*;

/// Dimensions we assume for an argument whose type has no typmod and that is no constant.
const UNKNOWN_DIMS: usize = 384;

/// What we know of one argument of a distance call: its dimensions (typmod or constant)
/// and whether its values may be stored out of line.
struct Arg {
    dims: Option<usize>,
    toastable: bool,
}

/// SAFETY: `node` is a valid expression node of the call being costed; `root` is null or
/// the planner's state.
unsafe fn describe(node: *mut pg_sys::Node, root: *mut pg_sys::PlannerInfo) -> Arg {
    unsafe {
        let typmod = pg_sys::exprTypmod(node);
        let mut arg = Arg { dims: (typmod > 0).then_some(typmod as usize), toastable: false };
        if (*node).type_ == pg_sys::NodeTag::T_Const {
            let c = node as *mut pg_sys::Const;
            if !(*c).constisnull {
                let p = (*c).constvalue.cast_mut_ptr::<u8>();
                // A constant's varlena header says its size (an out-of-line pointer's
                // size would be of the pointer: those are skipped).
                if !p.is_null() && !pgrx::varatt_is_1b_e(p.cast()) {
                    let dims = pgrx::varsize_any(p.cast()).saturating_sub(8) / 4;
                    if (1..=akidb_core::vector::MAX_DIM).contains(&dims) {
                        arg.dims = Some(dims);
                    }
                }
            }
        } else if (*node).type_ == pg_sys::NodeTag::T_Var && !root.is_null() {
            let var = node as *mut pg_sys::Var;
            let rtindex = (*var).varno as usize;
            if (*var).varlevelsup == 0 && rtindex > 0 && rtindex < (*root).simple_rel_array_size as usize {
                let rte = *(*root).simple_rte_array.add(rtindex);
                if !rte.is_null() && (*rte).rtekind == pg_sys::RTEKind::RTE_RELATION && (*var).varattno > 0 {
                    let tup = pg_sys::SearchSysCacheAttNum((*rte).relid, (*var).varattno);
                    if !tup.is_null() {
                        let att = pg_sys::heap_tuple_get_struct::<pg_sys::FormData_pg_attribute>(tup);
                        let storage = (*att).attstorage as u8;
                        arg.toastable = storage == b'e' || storage == b'x';
                        pg_sys::ReleaseSysCache(tup);
                    }
                }
            }
        } else {
            // An expression computed per row (a function of other columns) is not
            // fetched from TOAST by the distance; its own cost is its own.
        }
        arg
    }
}

/// pg_finfo record for the support function (a version-1 C function).
#[no_mangle]
pub extern "C" fn pg_finfo_akidb_distance_support() -> &'static pg_sys::Pg_finfo_record {
    const V1: pg_sys::Pg_finfo_record = pg_sys::Pg_finfo_record { api_version: 1 };
    &V1
}

/// `akidb_distance_support(internal) RETURNS internal`: SupportRequestCost for the
/// distance functions; every other request is declined (NULL).
#[no_mangle]
#[pg_guard]
pub unsafe extern "C-unwind" fn akidb_distance_support(fcinfo: pg_sys::FunctionCallInfo) -> pg_sys::Datum {
    // SAFETY: PostgreSQL calls a support function with one non-null `internal` argument,
    // a pointer to a Support* request node; we only read and fill a SupportRequestCost.
    unsafe {
        let req = (*fcinfo).args.as_slice(1)[0].value.cast_mut_ptr::<pg_sys::Node>();
        if req.is_null() || (*req).type_ != pg_sys::NodeTag::T_SupportRequestCost {
            return pg_sys::Datum::from(0usize);
        }
        let req = req as *mut pg_sys::SupportRequestCost;
        let call = (*req).node;
        let args = if call.is_null() {
            std::ptr::null_mut()
        } else if (*call).type_ == pg_sys::NodeTag::T_OpExpr {
            (*(call as *mut pg_sys::OpExpr)).args
        } else if (*call).type_ == pg_sys::NodeTag::T_FuncExpr {
            (*(call as *mut pg_sys::FuncExpr)).args
        } else {
            std::ptr::null_mut()
        };
        let described: Vec<Arg> = if args.is_null() {
            Vec::new()
        } else {
            pgrx::PgList::<pg_sys::Node>::from_pg(args).iter_ptr().map(|a| describe(a, (*req).root)).collect()
        };
        let d = described.iter().filter_map(|a| a.dims).max().unwrap_or(UNKNOWN_DIMS);
        let chunks = described.iter().filter(|a| a.toastable).count() * cost::toast_chunks(d);
        (*req).startup = 0.0;
        (*req).per_tuple = cost::distance_call(crate::index::cost_params(), d, chunks);
        pg_sys::Datum::from(req)
    }
}
