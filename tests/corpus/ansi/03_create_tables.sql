CREATE TABLE departments (
    department_id INTEGER PRIMARY KEY,
    department_name VARCHAR(100) NOT NULL,
    budget NUMERIC(12, 2)
);

CREATE TABLE employees (
    employee_id INTEGER PRIMARY KEY,
    department_id INTEGER REFERENCES departments (department_id),
    first_name VARCHAR(50),
    last_name  VARCHAR(50),
    hired_on DATE,
    salary NUMERIC(10,2)
);
