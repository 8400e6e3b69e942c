//! A module variable's `validation { condition, error_message }` blocks, evaluated when a request
//! arrives, so a bad value is a 422 naming the variable with the module's own message instead of
//! a run that fails in `terraform plan`. The evaluator covers what conditions are made of (the
//! variable, literals, operators, conditionals, `for` lists, indexes) and the Terraform functions
//! our modules use ([`FUNCTIONS`]); a condition that needs anything else is left to Terraform,
//! never guessed.

use hcl::{
    Expression,
    expr::{BinaryOperator, FuncCall, Operation, TraversalOperator, UnaryOperator},
};
use serde_json::Value;

/// The functions conditions may call; any other leaves the condition to Terraform.
pub const FUNCTIONS: &[&str] = &[
    "alltrue",
    "anytrue",
    "can",
    "cidrnetmask",
    "coalesce",
    "contains",
    "floor",
    "length",
    "lower",
    "regex",
    "split",
    "tonumber",
    "try",
];

/// One `validation` block of a variable.
#[derive(Debug, Clone)]
pub struct Validation {
    pub condition: Expression,
    pub error_message: String,
}

/// What a condition says of a value.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    Holds,
    Fails,
    /// It uses something this evaluator does not know: Terraform decides at plan time.
    LeftToTerraform(String),
}

/// Why an expression has no value: an error Terraform would raise too (what `can` and `try`
/// catch), or something only Terraform can evaluate.
#[derive(Debug)]
enum Stop {
    Error(String),
    Unsupported(String),
}

type Eval = Result<Value, Stop>;

fn error(message: impl Into<String>) -> Stop {
    Stop::Error(message.into())
}

impl Validation {
    /// Evaluates the condition with `var.<variable>` set to `value`.
    pub fn check(&self, variable: &str, value: &Value) -> Verdict {
        let scope = Scope { variable, value, locals: Vec::new() };
        match scope.eval(&self.condition) {
            Ok(Value::Bool(true)) => Verdict::Holds,
            Ok(Value::Bool(false)) => Verdict::Fails,
            // Terraform fails a condition that errors or is not a bool; say so at plan time.
            Ok(other) => {
                Verdict::LeftToTerraform(format!("the condition gave {other}, not a bool"))
            }
            Err(Stop::Error(message)) => Verdict::LeftToTerraform(message),
            Err(Stop::Unsupported(what)) => Verdict::LeftToTerraform(what),
        }
    }
}

/// The names in scope: `var.<variable>` and the `for` variables around the expression.
struct Scope<'a> {
    variable: &'a str,
    value: &'a Value,
    locals: Vec<(String, Value)>,
}

impl Scope<'_> {
    fn eval(&self, expr: &Expression) -> Eval {
        match expr {
            Expression::Null => Ok(Value::Null),
            Expression::Bool(b) => Ok(Value::Bool(*b)),
            Expression::Number(n) => Ok(number(n.as_f64().unwrap_or(f64::NAN))),
            Expression::String(s) => Ok(Value::String(s.clone())),
            Expression::Array(items) => Ok(Value::Array(
                items.iter().map(|item| self.eval(item)).collect::<Result<_, _>>()?,
            )),
            Expression::Parenthesis(inner) => self.eval(inner),
            Expression::Variable(name) => self
                .locals
                .iter()
                .rev()
                .find(|(local, _)| local == name.as_str())
                .map(|(_, value)| value.clone())
                .ok_or_else(|| Stop::Unsupported(format!("the name `{}`", name.as_str()))),
            Expression::Traversal(traversal) => {
                self.traverse(&traversal.expr, &traversal.operators)
            }
            Expression::FuncCall(call) => self.call(call),
            Expression::Conditional(conditional) => match self.eval(&conditional.cond_expr)? {
                Value::Bool(true) => self.eval(&conditional.true_expr),
                Value::Bool(false) => self.eval(&conditional.false_expr),
                other => Err(error(format!("a condition must be a bool, not {other}"))),
            },
            Expression::Operation(operation) => self.operation(operation),
            Expression::ForExpr(for_expr) => {
                if for_expr.key_expr.is_some() || for_expr.grouping {
                    return Err(Stop::Unsupported("a `for` expression making an object".into()));
                }
                // Over a list the key is the index; over a map, the key.
                let pairs: Vec<(Value, Value)> = match self.eval(&for_expr.collection_expr)? {
                    Value::Array(items) => (0..).map(|i| number(f64::from(i))).zip(items).collect(),
                    Value::Object(map) => {
                        map.into_iter().map(|(key, value)| (Value::String(key), value)).collect()
                    }
                    other => return Err(error(format!("`for` over {other}"))),
                };
                let mut out = Vec::new();
                for (key, item) in pairs {
                    let mut inner = Scope {
                        variable: self.variable,
                        value: self.value,
                        locals: self.locals.clone(),
                    };
                    if let Some(key_var) = &for_expr.key_var {
                        inner.locals.push((key_var.as_str().to_owned(), key));
                    }
                    inner.locals.push((for_expr.value_var.as_str().to_owned(), item));
                    if let Some(cond) = &for_expr.cond_expr {
                        if inner.eval(cond)? != Value::Bool(true) {
                            continue;
                        }
                    }
                    out.push(inner.eval(&for_expr.value_expr)?);
                }
                Ok(Value::Array(out))
            }
            Expression::Object(_) | Expression::TemplateExpr(_) => {
                Err(Stop::Unsupported("an object or a template".into()))
            }
            _ => Err(Stop::Unsupported("an expression kind this evaluator does not know".into())),
        }
    }

    fn traverse(&self, base: &Expression, operators: &[TraversalOperator]) -> Eval {
        let mut operators = operators.iter();
        let mut value = match (base, operators.clone().next()) {
            (Expression::Variable(root), Some(TraversalOperator::GetAttr(name)))
                if root.as_str() == "var" =>
            {
                operators.next();
                if name.as_str() != self.variable {
                    return Err(Stop::Unsupported(format!("another variable (`var.{name}`)")));
                }
                self.value.clone()
            }
            _ => self.eval(base)?,
        };
        for operator in operators {
            value = match operator {
                TraversalOperator::Index(index) => index_into(value, &self.eval(index)?)?,
                TraversalOperator::LegacyIndex(index) => index_into(value, &number(*index as f64))?,
                TraversalOperator::GetAttr(name) => match value {
                    Value::Object(mut map) => map
                        .remove(name.as_str())
                        .ok_or_else(|| error(format!("no attribute `{name}`")))?,
                    _ => return Err(error(format!("`.{name}` of something not an object"))),
                },
                _ => return Err(Stop::Unsupported("a splat".into())),
            };
        }
        Ok(value)
    }

    fn operation(&self, operation: &Operation) -> Eval {
        match operation {
            Operation::Unary(op) => match (op.operator, self.eval(&op.expr)?) {
                (UnaryOperator::Not, Value::Bool(b)) => Ok(Value::Bool(!b)),
                (UnaryOperator::Neg, Value::Number(n)) => Ok(number(-to_f64(&n))),
                (_, other) => Err(error(format!("an operator does not apply to {other}"))),
            },
            Operation::Binary(_) => {
                // hcl-rs parses a chain of operators without their precedence, so the chain is
                // read back in source order and reduced by Terraform's precedence. Every operand
                // is evaluated: `&&` and `||` do not short-circuit in Terraform either.
                let (mut operands, mut operators) = (Vec::new(), Vec::new());
                flatten(operation, &mut operands, &mut operators);
                let mut values: Vec<Value> = operands
                    .into_iter()
                    .map(|operand| self.eval(operand))
                    .collect::<Result<_, _>>()?;
                while let Some(at) = (0..operators.len())
                    .min_by_key(|&i| (std::cmp::Reverse(precedence(operators[i])), i))
                {
                    let operator = operators.remove(at);
                    let rhs = values.remove(at + 1);
                    let lhs = std::mem::take(&mut values[at]);
                    values[at] = binary(operator, lhs, rhs)?;
                }
                Ok(values.pop().unwrap_or(Value::Null))
            }
        }
    }

    fn call(&self, call: &FuncCall) -> Eval {
        let name = call.name.name.as_str();
        if !call.name.namespace.is_empty() || call.expand_final || !FUNCTIONS.contains(&name) {
            return Err(Stop::Unsupported(format!("the function `{}`", call.name)));
        }
        // The two that catch errors evaluate their arguments themselves.
        match name {
            "can" => {
                let [arg] = call.args.as_slice() else { return Err(arity(name)) };
                return match self.eval(arg) {
                    Ok(_) => Ok(Value::Bool(true)),
                    Err(Stop::Error(_)) => Ok(Value::Bool(false)),
                    Err(unsupported) => Err(unsupported),
                };
            }
            "try" => {
                let mut last = error("try: no argument succeeded");
                for arg in &call.args {
                    match self.eval(arg) {
                        Ok(value) => return Ok(value),
                        Err(Stop::Error(message)) => last = Stop::Error(message),
                        Err(unsupported) => return Err(unsupported),
                    }
                }
                return Err(last);
            }
            _ => {}
        }
        let args = call.args.iter().map(|arg| self.eval(arg)).collect::<Result<Vec<_>, _>>()?;
        function(name, &args)
    }
}

/// The operands and operators of a chain of binary operations, in source order (parentheses are
/// their own expressions, so they stay whole).
fn flatten<'e>(
    operation: &'e Operation,
    operands: &mut Vec<&'e Expression>,
    operators: &mut Vec<BinaryOperator>,
) {
    let Operation::Binary(op) = operation else { return };
    for (index, side) in [&op.lhs_expr, &op.rhs_expr].into_iter().enumerate() {
        if index == 1 {
            operators.push(op.operator);
        }
        match side {
            Expression::Operation(inner) if matches!(**inner, Operation::Binary(_)) => {
                flatten(inner, operands, operators)
            }
            other => operands.push(other),
        }
    }
}

/// Terraform's operator precedence, highest first: `* / %`, `+ -`, comparisons, `== !=`, `&&`,
/// `||`; operators of one level apply left to right.
fn precedence(operator: BinaryOperator) -> u8 {
    use BinaryOperator::*;
    match operator {
        Mul | Div | Mod => 6,
        Plus | Minus => 5,
        Less | LessEq | Greater | GreaterEq => 4,
        Eq | NotEq => 3,
        And => 2,
        Or => 1,
    }
}

fn arity(name: &str) -> Stop {
    error(format!("{name}: wrong number of arguments"))
}

fn number(n: f64) -> Value {
    serde_json::Number::from_f64(n).map_or(Value::Null, Value::Number)
}

fn to_f64(n: &serde_json::Number) -> f64 {
    n.as_f64().unwrap_or(f64::NAN)
}

fn index_into(value: Value, index: &Value) -> Eval {
    match (value, index) {
        (Value::Array(items), Value::Number(n)) => {
            let i = to_f64(n);
            if i < 0.0 || i.fract() != 0.0 || i as usize >= items.len() {
                return Err(error(format!("index {i} out of range")));
            }
            Ok(items[i as usize].clone())
        }
        (Value::Object(mut map), Value::String(key)) => {
            map.remove(key).ok_or_else(|| error(format!("no key `{key}`")))
        }
        (other, _) => Err(error(format!("cannot index {other}"))),
    }
}

/// Terraform's `==`: the same type and value (numbers by value, so `3 == 3.0`).
fn equal(lhs: &Value, rhs: &Value) -> bool {
    match (lhs, rhs) {
        (Value::Number(a), Value::Number(b)) => to_f64(a) == to_f64(b),
        (Value::Array(a), Value::Array(b)) => {
            a.len() == b.len() && a.iter().zip(b).all(|(a, b)| equal(a, b))
        }
        _ => lhs == rhs,
    }
}

fn binary(operator: BinaryOperator, lhs: Value, rhs: Value) -> Eval {
    use BinaryOperator::*;
    match (operator, &lhs, &rhs) {
        (Eq, ..) => Ok(Value::Bool(equal(&lhs, &rhs))),
        (NotEq, ..) => Ok(Value::Bool(!equal(&lhs, &rhs))),
        (And, Value::Bool(a), Value::Bool(b)) => Ok(Value::Bool(*a && *b)),
        (Or, Value::Bool(a), Value::Bool(b)) => Ok(Value::Bool(*a || *b)),
        (_, Value::Number(a), Value::Number(b)) => {
            let (a, b) = (to_f64(a), to_f64(b));
            match operator {
                Less => Ok(Value::Bool(a < b)),
                LessEq => Ok(Value::Bool(a <= b)),
                Greater => Ok(Value::Bool(a > b)),
                GreaterEq => Ok(Value::Bool(a >= b)),
                Plus => Ok(number(a + b)),
                Minus => Ok(number(a - b)),
                Mul => Ok(number(a * b)),
                Div if b != 0.0 => Ok(number(a / b)),
                Mod if b != 0.0 => Ok(number(a % b)),
                _ => Err(error("division by zero")),
            }
        }
        _ => Err(error(format!("`{operator:?}` does not apply to {lhs} and {rhs}"))),
    }
}

/// The functions other than `can` and `try`, on evaluated arguments.
fn function(name: &str, args: &[Value]) -> Eval {
    match (name, args) {
        ("alltrue" | "anytrue", [Value::Array(items)]) => {
            let bools: Vec<bool> = items
                .iter()
                .map(|item| {
                    item.as_bool().ok_or_else(|| error(format!("{name}: {item} is not a bool")))
                })
                .collect::<Result<_, _>>()?;
            Ok(Value::Bool(match name {
                "alltrue" => bools.iter().all(|b| *b),
                _ => bools.iter().any(|b| *b),
            }))
        }
        ("cidrnetmask", [Value::String(cidr)]) => cidr_netmask(cidr).map(Value::String),
        ("coalesce", _) => args
            .iter()
            .find(|arg| !arg.is_null() && arg.as_str() != Some(""))
            .cloned()
            .ok_or_else(|| error("coalesce: no non-null, non-empty argument")),
        ("contains", [Value::Array(items), wanted]) => {
            Ok(Value::Bool(items.iter().any(|item| equal(item, wanted))))
        }
        ("floor", [Value::Number(n)]) => Ok(number(to_f64(n).floor())),
        ("length", [Value::Array(items)]) => Ok(number(items.len() as f64)),
        ("length", [Value::Object(map)]) => Ok(number(map.len() as f64)),
        ("length", [Value::String(s)]) => Ok(number(s.chars().count() as f64)),
        ("lower", [Value::String(s)]) => Ok(Value::String(s.to_lowercase())),
        ("regex", [Value::String(pattern), Value::String(text)]) => {
            // Terraform's syntax is RE2's, which the regex crate follows; a pattern it cannot
            // compile is Terraform's to judge.
            let re = regex::Regex::new(pattern)
                .map_err(|err| Stop::Unsupported(format!("the pattern {pattern:?}: {err}")))?;
            match re.find(text) {
                Some(found) => Ok(Value::String(found.as_str().to_owned())),
                None => Err(error("regex: no match")),
            }
        }
        ("split", [Value::String(separator), Value::String(text)]) => Ok(Value::Array(
            text.split(separator.as_str()).map(|part| Value::String(part.to_owned())).collect(),
        )),
        ("tonumber", [Value::Number(n)]) => Ok(Value::Number(n.clone())),
        ("tonumber", [Value::String(s)]) => s
            .trim()
            .parse::<f64>()
            .ok()
            .filter(|n| n.is_finite() && s.trim() == s)
            .map(number)
            .ok_or_else(|| error(format!("tonumber: {s:?} is not a number"))),
        (_, args) if args.iter().any(Value::is_null) => {
            Err(error(format!("{name}: a null argument")))
        }
        _ => Err(error(format!("{name}: arguments of the wrong type or number"))),
    }
}

/// `cidrnetmask`: the netmask of an IPv4 CIDR block (Terraform refuses IPv6 here too).
fn cidr_netmask(cidr: &str) -> Result<String, Stop> {
    let invalid = || error(format!("cidrnetmask: {cidr:?} is not an IPv4 CIDR block"));
    let (address, prefix) = cidr.split_once('/').ok_or_else(invalid)?;
    address.parse::<std::net::Ipv4Addr>().map_err(|_| invalid())?;
    let prefix: u32 = prefix.parse().ok().filter(|p| *p <= 32).ok_or_else(invalid)?;
    let mask = u32::MAX.checked_shl(32 - prefix).unwrap_or(0);
    Ok(std::net::Ipv4Addr::from(mask).to_string())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn condition(text: &str) -> Validation {
        let body: hcl::Body = hcl::from_str(&format!("c = {text}\n")).unwrap();
        let expr = body.attributes().next().unwrap().expr().clone();
        Validation { condition: expr, error_message: String::new() }
    }

    fn verdict(text: &str, value: Value) -> Verdict {
        condition(text).check("x", &value)
    }

    #[test]
    fn whole_numbers_in_a_range() {
        let c = "var.x >= 1 && var.x <= 100 && floor(var.x) == var.x";
        assert_eq!(verdict(c, json!(3)), Verdict::Holds);
        assert_eq!(verdict(c, json!(100)), Verdict::Holds);
        for bad in [
            json!(0),
            json!(-1),
            json!(3.5),
            json!(101),
            json!(1e308),
            json!(18446744073709551615u64),
        ] {
            assert_eq!(verdict(c, bad.clone()), Verdict::Fails, "{bad}");
        }
    }

    #[test]
    fn patterns_cidrs_lists_and_nulls() {
        let name = r#"can(regex("^[a-z][a-z0-9-]{0,19}$", var.x))"#;
        assert_eq!(verdict(name, json!("nim")), Verdict::Holds);
        assert_eq!(verdict(name, json!("Nim_1")), Verdict::Fails);
        let optional = r#"var.x == null || can(regex("^ami-[0-9a-f]{8,17}$", var.x))"#;
        assert_eq!(verdict(optional, Value::Null), Verdict::Holds);
        assert_eq!(verdict(optional, json!("ami-0123456789abcdef0")), Verdict::Holds);
        assert_eq!(verdict(optional, json!("ami-nope")), Verdict::Fails);
        let cidrs = "length(var.x) >= 1 && alltrue([for c in var.x : can(cidrnetmask(c))])";
        assert_eq!(verdict(cidrs, json!(["10.0.0.0/8", "192.168.1.7/32"])), Verdict::Holds);
        assert_eq!(verdict(cidrs, json!([])), Verdict::Fails);
        assert_eq!(verdict(cidrs, json!(["10.0.0.0/8", "10.0.0.0/33"])), Verdict::Fails);
        assert_eq!(verdict(cidrs, json!(["::1/128"])), Verdict::Fails);
        let block =
            r#"can(cidrnetmask(var.x)) && try(tonumber(split("/", var.x)[1]) <= 24, false)"#;
        assert_eq!(verdict(block, json!("10.20.0.0/16")), Verdict::Holds);
        assert_eq!(verdict(block, json!("10.20.0.0/28")), Verdict::Fails);
        assert_eq!(verdict(block, json!("nope")), Verdict::Fails);
        let zone = r#"var.x == null || contains(["1", "2", "3"], coalesce(var.x, "x"))"#;
        assert_eq!(verdict(zone, json!("2")), Verdict::Holds);
        assert_eq!(verdict(zone, json!("4")), Verdict::Fails);
        assert_eq!(verdict("contains([0, 1, 2, 4, 8], var.x)", json!(4.0)), Verdict::Holds);
        // Precedence: `*` before `+`, comparisons before `==`, `&&` before `||`, left to right.
        assert_eq!(verdict("1 + 2 * 3 == 7 && var.x - 1 - 1 == 0", json!(2)), Verdict::Holds);
        assert_eq!(verdict("true || false && false", json!(0)), Verdict::Holds);
        let labels = r#"alltrue([for k, v in var.x : can(regex("^[a-z]+$", k)) && v != ""])"#;
        assert_eq!(verdict(labels, json!({"team": "db"})), Verdict::Holds);
        assert_eq!(verdict(labels, json!({"Team": "db"})), Verdict::Fails);
        assert_eq!(verdict(labels, json!({"team": ""})), Verdict::Fails);
        assert_eq!(verdict("(true || false) && false", json!(0)), Verdict::Fails);
    }

    #[test]
    fn anything_unknown_is_left_to_terraform_never_guessed() {
        for (text, why) in [
            ("startswith(var.x, \"a\")", "the function `startswith`"),
            ("var.other == 1", "another variable"),
            ("local.limit > var.x", "the name `local`"),
            (r#"can(regex("(?<=a)b", var.x))"#, "the pattern"),
            ("var.x", "not a bool"),
        ] {
            match verdict(text, json!("a")) {
                Verdict::LeftToTerraform(reason) => {
                    assert!(reason.contains(why), "{text}: {reason}")
                }
                other => panic!("{text}: {other:?}"),
            }
        }
    }
}
